//! `namespace()` for chat templates, with a guard on what a namespace may hold.
//!
//! minijinja's own namespace accepts any value, so a template from a model file could store a
//! namespace in itself (`{% set ns.s = ns %}`) or nest a list one level deeper on every loop
//! turn (`{% set ns.x = [ns.x] %}`). Printing, comparing or serialising such a value then
//! recurses without end (or 100,000 levels deep) and overflows the stack: an abort that takes
//! the app down, which no fuel or recursion limit catches.
//!
//! Here a namespace is our own object, and every `{% set ns.attr = … %}` is rewritten, before
//! compiling, into a call of [`SET_ATTR`], which refuses a value that holds a namespace or nests
//! deeper than [`MAX_NESTING`]. Values are immutable everywhere else in Jinja, so no cycle and
//! no unbounded depth can form. Real chat templates keep flags, counters, strings and short
//! lists in their namespaces, which all pass.

use minijinja::machinery::{parse, tokenize, Span, Token};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Value};
use minijinja::{Environment, Error, ErrorKind, State};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The function every namespace assignment is rewritten into.
const SET_ATTR: &str = "__llmcad_set_attr";
/// The variable that receives its (empty) result.
const DISCARD: &str = "__llmcad_discard";
/// The prefix of the variables that carry an assigned value to [`SET_ATTR`].
const VALUE: &str = "__llmcad_value_";

/// How deep lists and dicts kept in a namespace may nest; real templates nest two or three.
pub const MAX_NESTING: usize = 32;

/// Registers `namespace()` and the assignment function in `env`.
pub fn register(env: &mut Environment<'static>) {
    env.add_function("namespace", namespace);
    env.add_function(SET_ATTR, set_attr);
}

#[derive(Debug, Default)]
struct Namespace {
    attrs: Mutex<BTreeMap<Arc<str>, Value>>,
}

impl Namespace {
    fn attrs(&self) -> std::sync::MutexGuard<'_, BTreeMap<Arc<str>, Value>> {
        self.attrs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Object for Namespace {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.attrs().get(key.as_str()?).cloned()
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.attrs().keys().map(|k| Value::from(&**k)).collect())
    }
}

/// `namespace()`, `namespace(a=1)`, `namespace({'a': 1})`, or both forms as Python's Jinja allows.
fn namespace(state: &State, dict: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let ns = Namespace::default();
    let mut initial: Vec<(Value, Value)> = Vec::new();
    if let Some(dict) = dict {
        let pairs = dict
            .as_object()
            .filter(|o| matches!(o.repr(), ObjectRepr::Map))
            .and_then(|o| o.try_iter_pairs())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    format!("namespace() takes a dict, not {}", dict.kind()),
                )
            })?;
        initial.extend(pairs);
    }
    for key in kwargs.args() {
        initial.push((Value::from(key), kwargs.get::<Value>(key)?));
    }
    for (key, value) in initial {
        if let Some(key) = key.as_str() {
            check_storable(state, &value, 0)?;
            ns.attrs().insert(key.into(), value);
        }
    }
    Ok(Value::from_object(ns))
}

/// `{% set target.name = value %}`, after the rewrite.
fn set_attr(state: &State, target: &Value, name: &str, value: Value) -> Result<Value, Error> {
    let ns = target.downcast_object_ref::<Namespace>().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("can only assign to namespaces, not {}", target.kind()),
        )
    })?;
    check_storable(state, &value, 0)?;
    ns.attrs().insert(name.into(), value);
    Ok(Value::from(()))
}

/// Refuses a value that holds a namespace or nests deeper than [`MAX_NESTING`]. Each item
/// visited costs a unit of the render's fuel, so storing a big list over and over ends in
/// the out-of-fuel error rather than a hang.
fn check_storable(state: &State, value: &Value, depth: usize) -> Result<(), Error> {
    state.consume_fuel(1)?;
    let Some(object) = value.as_object() else {
        return Ok(());
    };
    if value.downcast_object_ref::<Namespace>().is_some() {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "a namespace cannot hold a namespace (it could then hold itself)",
        ));
    }
    if depth == MAX_NESTING {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("a namespace cannot hold values nested over {MAX_NESTING} levels deep"),
        ));
    }
    match object.repr() {
        ObjectRepr::Map => {
            for (_, item) in object.try_iter_pairs().into_iter().flatten() {
                check_storable(state, &item, depth + 1)?;
            }
        }
        ObjectRepr::Seq | ObjectRepr::Iterable => {
            for item in object.try_iter().into_iter().flatten() {
                check_storable(state, &item, depth + 1)?;
            }
        }
        // functions, macros, loop state: shown by name, never recursed into
        _ => {}
    }
    Ok(())
}

/// Rewrites every assignment to a namespace attribute, in all its forms
/// (`{% set a.b = v %}`, `{% set x, a.b = v %}`, `{% set a.b %}…{% endset %}`), so that the
/// attribute is set by [`SET_ATTR`]: each `a.b` target becomes a fresh variable, and
/// `{% set __llmcad_discard = __llmcad_set_attr(a, "b", <variable>) %}` follows the statement
/// (after its `endset` for the block form), closed like it so that whitespace control is kept.
/// Lines keep their numbers; template errors come from minijinja's own compile of the result.
pub fn rewrite_attribute_assignments(source: &str, syntax: SyntaxConfig) -> String {
    // a syntax error is reported by minijinja, at its place in the unchanged source
    if parse(source, "chat", syntax.clone()).is_err() {
        return source.to_string();
    }
    let Ok(tokens) = tokenize(source, false, syntax).collect::<Result<Vec<_>, _>>() else {
        return source.to_string();
    };
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    // per open `{% set … %}…{% endset %}` block, the assignments to add after its `endset`
    let mut open_blocks: Vec<String> = Vec::new();
    let mut n_values = 0;
    let mut i = 0;
    while i + 1 < tokens.len() {
        let starts_statement = matches!(tokens[i].0, Token::BlockStart);
        i += 1;
        if !starts_statement {
            continue;
        }
        match tokens[i].0 {
            Token::Ident("endset") => {
                let follow_up = open_blocks.pop().unwrap_or_default();
                let Some(end) = block_end(&tokens, i) else {
                    break;
                };
                if !follow_up.is_empty() {
                    let at = tokens[end].1.end_offset as usize;
                    let close = &source[tokens[end].1.start_offset as usize..at];
                    edits.push((at, at, follow_up.replace("%}", close)));
                }
            }
            Token::Ident("set") => {
                let Some(end) = block_end(&tokens, i) else {
                    break;
                };
                let mut follow_up = String::new();
                let mut is_block = true;
                // the targets: names, dotted names, commas, up to `=`, `|` or the statement's end
                let mut j = i + 1;
                while j < end {
                    match tokens[j].0 {
                        Token::Assign => {
                            is_block = false;
                            break;
                        }
                        Token::Pipe => break,
                        Token::Ident(_) if matches!(tokens.get(j + 1), Some((Token::Dot, _))) => {
                            let first = j;
                            let mut last_dot = j + 1;
                            j += 2;
                            while matches!(tokens.get(j + 1), Some((Token::Dot, _))) {
                                last_dot = j + 1;
                                j += 2;
                            }
                            let (Token::Ident(attr), _) = tokens[j] else {
                                break;
                            };
                            let span_text = |from: usize, to: usize| {
                                &source[tokens[from].1.start_offset as usize
                                    ..tokens[to].1.end_offset as usize]
                            };
                            let variable = format!("{VALUE}{n_values}");
                            n_values += 1;
                            follow_up.push_str(&format!(
                                "{{% set {DISCARD} = {SET_ATTR}({}, {attr:?}, {variable}) %}}",
                                span_text(first, last_dot - 1)
                            ));
                            edits.push((
                                tokens[first].1.start_offset as usize,
                                tokens[j].1.end_offset as usize,
                                variable,
                            ));
                            j += 1;
                        }
                        _ => j += 1,
                    }
                }
                if is_block {
                    open_blocks.push(follow_up);
                } else if !follow_up.is_empty() {
                    let at = tokens[end].1.end_offset as usize;
                    let close = &source[tokens[end].1.start_offset as usize..at];
                    edits.push((at, at, follow_up.replace("%}", close)));
                }
                i = end;
            }
            _ => {}
        }
    }
    let mut out = String::with_capacity(source.len() + edits.len() * 64);
    let mut copied = 0;
    for (from, to, text) in edits {
        out.push_str(&source[copied..from]);
        out.push_str(&text);
        copied = to;
    }
    out.push_str(&source[copied..]);
    out
}

/// The index of the `%}` that ends the statement whose keyword is at `keyword`.
fn block_end(tokens: &[(Token<'_>, Span)], keyword: usize) -> Option<usize> {
    (keyword..tokens.len()).find(|&k| matches!(tokens[k].0, Token::BlockEnd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syntax() -> SyntaxConfig {
        super::super::syntax().unwrap()
    }

    fn render(env: &Environment<'static>, source: String) -> Result<String, Error> {
        let mut env = env.clone();
        env.add_template_owned("t", source)?;
        env.get_template("t")?.render(minijinja::context! {})
    }

    /// minijinja's own namespace, the reference for what templates see.
    fn native(source: &str) -> Result<String, Error> {
        let mut env = Environment::new();
        env.set_syntax(syntax());
        render(&env, source.to_string())
    }

    fn guarded(source: &str) -> Result<String, Error> {
        let mut env = Environment::new();
        env.set_syntax(syntax());
        env.set_fuel(Some(1_000_000));
        register(&mut env);
        render(&env, rewrite_attribute_assignments(source, syntax()))
    }

    #[test]
    fn templates_see_the_same_namespaces_as_in_minijinja() {
        let benign = [
            // flags and counters carried out of loops, the way chat templates use them
            "{% set ns = namespace(found=false, n=0) %}{% for i in range(5) %}{% if i == 3 %}\
             {% set ns.found = true %}{% endif %}{% set ns.n = ns.n + i %}{% endfor %}\
             {{ ns.found }} {{ ns.n }}",
            // Qwen3's search for the last user query, reduced
            "{% set msgs = [{'role': 'user'}, {'role': 'assistant'}, {'role': 'user'}] %}\
             {% set ns = namespace(multi_step_tool=true, last_query_index=msgs|length - 1) %}\
             {% for m in msgs[::-1] %}{% set index = (msgs|length - 1) - loop.index0 %}\
             {% if ns.multi_step_tool and m.role == 'user' %}{% set ns.multi_step_tool = false %}\
             {% set ns.last_query_index = index %}{% endif %}{% endfor %}{{ ns.last_query_index }}",
            "{% set ns = namespace({'s': 'a', 't': 'b'}) %}{% set ns.s = ns.s ~ ns.t %}{{ ns.s }}",
            "{% set ns = namespace(s='a', t='b') %}{% set ns.s = ns.s ~ ns.t %}{{ ns.s }}",
            "{% set ns = namespace() %}{% set ns.l = [1, [2, {'k': 'v'}]] %}{{ ns.l }} {{ ns }}",
            // unpacking, block capture (with a filter), whitespace control, trim_blocks
            "{% set ns = namespace() %}{% set a, ns.b = 1, 2 %}{{ a }}{{ ns.b }}",
            "{% set ns = namespace() %}{% set ns.text %}  x {{ 1 + 1 }}{% endset %}[{{ ns.text }}]",
            "{% set ns = namespace() %}{% set ns.t | upper %}abc{% endset %}{{ ns.t }}",
            "{% set ns = namespace(a=1) %}\n{%- set ns.a = 2 -%}\n   {{ ns.a }}\n{% set ns.a = 3 %}\n{{ ns.a }}",
            "{% set ns = namespace(x=1) %}{% set t = [ns.x, ns.x] %}{% set ns.x = t %}{{ ns.x }}",
            // not an assignment: `set` in text and raw blocks, and a dotted read
            "set ns.a = 1 {% raw %}{% set ns.a = 1 %}{% endraw %}{% set x = namespace(a=4).a %}{{ x }}",
            "{% set ns = namespace(a=1) %}{% if ns %}{{ ns['a'] }}{% for k in ns %}{{ k }}{% endfor %}{% endif %}",
        ];
        for source in benign {
            let theirs = native(source).expect(source);
            assert_eq!(guarded(source).expect(source), theirs, "{source}");
        }
        let wrong = "{% set d = {'a': 1} %}{% set d.a = 2 %}";
        let (ours, theirs) = (guarded(wrong).unwrap_err(), native(wrong).unwrap_err());
        assert!(
            ours.to_string().contains("can only assign to namespaces"),
            "{ours}"
        );
        assert!(
            theirs.to_string().contains("can only assign to namespaces"),
            "{theirs}"
        );
    }

    /// Each of these overflows the stack with minijinja's own namespace (checked by hand: the
    /// process aborts); here each is a plain error.
    #[test]
    fn a_namespace_cannot_hold_itself_or_nest_without_end() {
        let hostile = [
            "{% set ns = namespace(s=1) %}{% set ns.s = ns %}{{ ns }}",
            "{% set a = namespace() %}{% set b = namespace(a=a) %}{% set a.b = b %}{{ a }}",
            "{% set a = namespace() %}{% set b = namespace() %}{% set a.b = b %}{% set b.a = a %}{{ a }}",
            "{% set ns = namespace() %}{% set ns.l = [1, {'x': [ns]}] %}{{ ns }}",
            "{% set ns = namespace() %}{% set x, ns.s = 1, ns %}{{ ns }}",
            "{% set ns = namespace(x=[]) %}{% for i in range(99999) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}",
            // found by the fuzzer (tests/fuzz, chat_template target, seed 21)
            "{% set ns = namespace(s='ab{% call f(1) %}x{% endcall %}')  %}{% set ns.s = ns%}\
             {% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        ];
        for source in hostile {
            let e = guarded(source).unwrap_err();
            assert!(
                e.to_string().contains("namespace cannot hold"),
                "{source}: {e}"
            );
        }
        let deep = "{% set ns = namespace(x=0) %}{% for i in range(MAX) %}{% set ns.x = [ns.x] %}\
                    {% endfor %}{{ ns.x|length }}";
        let at_limit = deep.replace("MAX", &MAX_NESTING.to_string());
        assert_eq!(guarded(&at_limit).unwrap(), "1");
        let over = deep.replace("MAX", &(MAX_NESTING + 1).to_string());
        assert!(guarded(&over).is_err());
    }

    #[test]
    fn storing_a_big_list_over_and_over_runs_out_of_fuel() {
        let source = "{% set ns = namespace(x=range(5000)|list) %}{% for i in range(100000) %}\
                      {% set ns.x = ns.x %}{% endfor %}";
        let e = guarded(source).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutOfFuel, "{e}");
    }

    #[test]
    fn rewriting_keeps_line_numbers_and_leaves_syntax_errors_to_minijinja() {
        let source =
            "{% set ns = namespace() %}\n{% set ns.a = 1 %}\n{% set ns.b %}x{% endset %}\n";
        let rewritten = rewrite_attribute_assignments(source, syntax());
        assert_eq!(rewritten.lines().count(), source.lines().count());
        assert!(
            !rewritten.contains("ns.a") && !rewritten.contains("ns.b"),
            "{rewritten}"
        );
        let broken = "{% set ns.a = %}{% for %}";
        assert_eq!(rewrite_attribute_assignments(broken, syntax()), broken);
    }
}
