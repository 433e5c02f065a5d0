//! Chat templates (the Jinja templates of `tokenizer_config.json` / `tokenizer.chat_template`),
//! rendered with minijinja the way `transformers` renders them: `trim_blocks` and
//! `lstrip_blocks` on, Python string methods (`.strip()`, `.startswith()`, …) through
//! minijinja-contrib's pycompat, and the globals `messages`, `add_generation_prompt`,
//! `bos_token`, `eos_token`, `raise_exception(msg)` and `strftime_now(fmt)`.

use crate::error::{Error, Result};
use minijinja::value::Value;
use minijinja::{context, Environment, ErrorKind};

mod namespace;
mod value_size;

/// One chat turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source_len: usize,
    family: &'static str,
    bos: String,
    eos: String,
}

const NAME: &str = "chat";

/// The work one render may do: about one instruction, or 64 bytes of output or of strings
/// built, per unit. A template is code from the model file, so this bounds its time, memory
/// and output (here ~64 MB); real templates use a few thousand units per conversation, plus
/// the bytes of the messages they copy.
const FUEL: u64 = 1_000_000;
/// Nesting depth of loops, conditionals and macro calls; real templates nest a few levels.
/// Well under minijinja's own cap, for the small stacks of an app's threads.
const RECURSION_LIMIT: usize = 100;

/// The syntax Hugging Face renders chat templates with: `trim_blocks` and `lstrip_blocks`.
fn syntax() -> std::result::Result<minijinja::syntax::SyntaxConfig, minijinja::Error> {
    minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
}

fn template_err(e: minijinja::Error) -> Error {
    if e.kind() == ErrorKind::OutOfFuel {
        return Error::Template(
            "rendering took more work or output than a chat template should (the template \
             loops without end or builds huge text)"
                .into(),
        );
    }
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    Error::Template(msg)
}

impl ChatTemplate {
    /// Compiles `source`; `bos`/`eos` are the texts of the BOS/EOS tokens (`bos_token`,
    /// `eos_token` in the template; empty when unknown).
    pub fn new(source: &str, bos: Option<String>, eos: Option<String>) -> Result<Self> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        let syntax = syntax().map_err(template_err)?;
        env.set_syntax(syntax.clone());
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
        namespace::register(&mut env);
        value_size::register(&mut env);
        let checked =
            value_size::rewrite_value_builders(source, syntax.clone()).map_err(template_err)?;
        env.add_template_owned(
            NAME,
            namespace::rewrite_attribute_assignments(&checked, syntax),
        )
        .map_err(template_err)?;
        Ok(ChatTemplate {
            env,
            source_len: source.len(),
            family: family(source),
            bos: bos.unwrap_or_default(),
            eos: eos.unwrap_or_default(),
        })
    }

    /// From `tokenizer_config.json`'s `chat_template`: a string, or a list of
    /// `{name, template}` (the one named "default", else the first).
    pub fn from_config_value(
        value: &serde_json::Value,
        bos: Option<String>,
        eos: Option<String>,
    ) -> Result<Self> {
        let source = match value {
            serde_json::Value::String(s) => s.as_str(),
            serde_json::Value::Array(list) => {
                let named = |n: &str| {
                    list.iter()
                        .find(|t| t.get("name").and_then(|v| v.as_str()) == Some(n))
                };
                named("default")
                    .or_else(|| list.first())
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| {
                        Error::Template(
                            "chat_template is a list without a {name, template} entry".into(),
                        )
                    })?
            }
            other => {
                return Err(Error::Template(format!(
                    "chat_template should be a string or a list of {{name, template}}, found {}",
                    short(other)
                )))
            }
        };
        Self::new(source, bos, eos)
    }

    /// One line for `llmcad info`, e.g. "ChatML (jinja, 1234 chars)".
    pub fn summary(&self) -> String {
        format!("{} (jinja, {} chars)", self.family, self.source_len)
    }

    /// Renders the conversation; with `add_generation_prompt` the text ends where the
    /// assistant's answer begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let t = self.env.get_template(NAME).map_err(template_err)?;
        let messages: Value = messages
            .iter()
            .map(|m| {
                Value::from_pairs([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        let mut out = BoundedOutput(Vec::new());
        t.render_captured_to(
            context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos.as_str(),
                eos_token => self.eos.as_str(),
            },
            &mut out,
        )
        .map_err(template_err)?;
        String::from_utf8(out.0).map_err(|_| Error::Template("rendered text is not UTF-8".into()))
    }
}

/// The most text one render may write: half a million tokens' worth, more than any context
/// holds. Fuel charges output only after it is written, and the fuel allows about 64 MB; no
/// chat template needs more than this. (Values too big to print are refused before, by
/// `value_size`.)
const MAX_OUTPUT: usize = 2 << 20;

/// The render's output, refusing to grow past [`MAX_OUTPUT`].
struct BoundedOutput(Vec<u8>);

impl std::io::Write for BoundedOutput {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + bytes.len() > MAX_OUTPUT {
            return Err(std::io::Error::other(format!(
                "the rendered text would exceed {} MB",
                MAX_OUTPUT >> 20
            )));
        }
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn short(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

/// The chat format a template produces, recognised by its markers.
fn family(src: &str) -> &'static str {
    const KNOWN: &[(&str, &str)] = &[
        ("<|im_start|>", "ChatML"),
        ("<|start_header_id|>", "Llama 3"),
        ("<start_of_turn>", "Gemma"),
        ("<｜User｜>", "DeepSeek"),
        ("<|user|>", "Zephyr/Phi-3"),
        ("[INST]", "Llama 2/Mistral"),
        ("<|START_OF_TURN_TOKEN|>", "Command-R"),
    ];
    KNOWN
        .iter()
        .find(|(marker, _)| src.contains(marker))
        .map(|(_, name)| *name)
        .unwrap_or("custom")
}

/// `strftime_now(fmt)`: the current UTC time, with the common `strftime` directives
/// (`%Y %y %m %d %e %H %M %S %j %b %B %a %A %p %I %%`); others are kept as written.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(fmt, secs)
}

fn strftime(fmt: &str, unix: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = unix.div_euclid(86400);
    let tod = unix.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let month = MONTHS[(m - 1) as usize];
    let (hh, mm, ss) = (tod / 3600, tod / 60 % 60, tod % 60);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('H') => out.push_str(&format!("{hh:02}")),
            Some('I') => out.push_str(&format!("{:02}", (hh + 11) % 12 + 1)),
            Some('p') => out.push_str(if hh < 12 { "AM" } else { "PM" }),
            Some('M') => out.push_str(&format!("{mm:02}")),
            Some('S') => out.push_str(&format!("{ss:02}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('B') => out.push_str(month),
            Some('b') => out.push_str(&month[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 → (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %a %A %b %B %j %y %I%p %%", t),
            "2024-02-29 13:05:09 Thu Thursday Feb February 060 24 01PM %"
        );
        assert_eq!(strftime("%d %b %Y", 0), "01 Jan 1970");
    }
}
