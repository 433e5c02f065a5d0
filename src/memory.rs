//! How much memory the process may use, as the OS sees it (not total RAM): the budget the
//! target's weights will stream under on a phone.
//!
//! - Linux and Android: `MemAvailable` from `/proc/meminfo`, lowered by the process's cgroup
//!   limit minus its usage (cgroup v2 `memory.max` − `memory.current`, v1
//!   `memory.limit_in_bytes` − `memory.usage_in_bytes`) when there is one.
//! - iOS: `os_proc_available_memory()`, the headroom before jetsam ends the app.
//! - Elsewhere (macOS, Windows, …): unknown, [`available_bytes`] returns `None` and
//!   [`MemoryBudget::Auto`] means "no budget" (the model is held whole).

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// A limit on the memory the engine may use for weights and caches.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum MemoryBudget {
    /// What the OS says the process may still use ([`available_bytes`]).
    #[default]
    Auto,
    /// A fixed number of bytes.
    Bytes(u64),
    /// A fraction (0, 1] of the target's weights: `25%` keeps a quarter of them resident and
    /// streams the rest (the way to emulate a model four times the memory it gets).
    Fraction(f32),
}

impl MemoryBudget {
    /// The budget in bytes now; `None` when it depends on the OS and the OS does not say.
    /// `weights`: the target's weight bytes, which a fraction is taken of.
    pub fn resolve(&self, weights: u64) -> Option<u64> {
        match *self {
            MemoryBudget::Bytes(b) => Some(b),
            MemoryBudget::Auto => available_bytes(),
            MemoryBudget::Fraction(f) => Some((weights as f64 * f as f64) as u64),
        }
    }
}

impl fmt::Display for MemoryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryBudget::Auto => write!(f, "auto"),
            MemoryBudget::Bytes(b) => write!(f, "{b}B"),
            MemoryBudget::Fraction(x) => write!(f, "{}%", x * 100.0),
        }
    }
}

impl FromStr for MemoryBudget {
    type Err = Error;

    /// `auto`, a byte count with an optional unit (`1048576`, `64MiB`, `1.5GB`, `512M`), or a
    /// percentage of the available memory (`25%`). `K`/`M`/`G`/`T` alone and `KiB`… are powers
    /// of 1024, `KB`/`MB`/`GB`/`TB` powers of 1000; case does not matter.
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "memory budget {s:?}: {why} (examples: auto, 64MiB, 1.5GB, 25%)"
            ))
        };
        if t.eq_ignore_ascii_case("auto") {
            return Ok(MemoryBudget::Auto);
        }
        if let Some(p) = t.strip_suffix('%') {
            let v: f32 = p.trim().parse().map_err(|_| bad("not a percentage"))?;
            if !(v > 0.0 && v <= 100.0) {
                return Err(bad("a percentage must be in (0, 100]"));
            }
            return Ok(MemoryBudget::Fraction(v / 100.0));
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit = unit.trim().to_ascii_lowercase();
        let mult: u64 = match unit.as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => return Err(bad("unknown unit")),
        };
        let v: f64 = num.parse().map_err(|_| bad("not a number"))?;
        let bytes = v * mult as f64;
        if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
            return Err(bad("out of range"));
        }
        if (unit.is_empty() || unit == "b") && num.contains('.') {
            return Err(bad("a byte count must be whole"));
        }
        Ok(MemoryBudget::Bytes(bytes as u64))
    }
}

/// Bytes the process may still allocate before the OS pushes back, or `None` when this
/// platform does not say (see the module notes).
pub fn available_bytes() -> Option<u64> {
    imp::available_bytes()
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix("MemAvailable:")?;
        let mut it = rest.split_whitespace();
        let v: u64 = it.next()?.parse().ok()?;
        match it.next() {
            Some("kB") | None => Some(v * 1024),
            _ => None,
        }
    })
}

/// A cgroup limit file (`memory.max`, `memory.limit_in_bytes`): `None` for no limit (`max`,
/// or v1's "unlimited" value near `i64::MAX`).
pub fn parse_cgroup_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    let v: u64 = t.parse().ok()?;
    (v < 1 << 60).then_some(v)
}

/// The cgroup v2 path of this process from a `/proc/self/cgroup` text (`0::/path`).
pub fn parse_cgroup_v2_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// What is left under a cgroup limit given its usage.
pub fn headroom(limit: Option<u64>, usage: Option<u64>) -> Option<u64> {
    limit.map(|l| l.saturating_sub(usage.unwrap_or(0)))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    use super::*;
    use std::fs::read_to_string;

    fn read_u64(path: &str) -> Option<u64> {
        read_to_string(path).ok()?.trim().parse().ok()
    }

    fn cgroup_headroom() -> Option<u64> {
        // v2: the process's own group (its path relative to the mount), then the mount root
        // (what a container usually sees)
        let mut dirs = Vec::new();
        if let Some(p) = read_to_string("/proc/self/cgroup")
            .ok()
            .as_deref()
            .and_then(parse_cgroup_v2_path)
        {
            dirs.push(format!("/sys/fs/cgroup{}", p.trim_end_matches('/')));
        }
        dirs.push("/sys/fs/cgroup".into());
        for d in &dirs {
            if let Ok(max) = read_to_string(format!("{d}/memory.max")) {
                return headroom(
                    parse_cgroup_limit(&max),
                    read_u64(&format!("{d}/memory.current")),
                );
            }
        }
        // v1
        let limit = read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes").ok()?;
        headroom(
            parse_cgroup_limit(&limit),
            read_u64("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
        )
    }

    pub fn available_bytes() -> Option<u64> {
        let meminfo = read_to_string("/proc/meminfo")
            .ok()
            .as_deref()
            .and_then(parse_meminfo);
        match (meminfo, cgroup_headroom()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(target_os = "ios")]
mod imp {
    extern "C" {
        /// libSystem (iOS 13+): bytes the app can still allocate before jetsam ends it.
        fn os_proc_available_memory() -> usize;
    }

    pub fn available_bytes() -> Option<u64> {
        // SAFETY: no arguments, no preconditions; returns 0 when it does not apply
        let n = unsafe { os_proc_available_memory() };
        (n > 0).then_some(n as u64)
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "ios")))]
mod imp {
    pub fn available_bytes() -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_budgets() {
        let p = |s: &str| s.parse::<MemoryBudget>().unwrap();
        assert_eq!(p("auto"), MemoryBudget::Auto);
        assert_eq!(p("AUTO"), MemoryBudget::Auto);
        assert_eq!(p("64MiB"), MemoryBudget::Bytes(64 << 20));
        assert_eq!(p("64m"), MemoryBudget::Bytes(64 << 20));
        assert_eq!(p("1.5GB"), MemoryBudget::Bytes(1_500_000_000));
        assert_eq!(p("2 GiB"), MemoryBudget::Bytes(2 << 30));
        assert_eq!(p("4096"), MemoryBudget::Bytes(4096));
        assert_eq!(p("25%"), MemoryBudget::Fraction(0.25));
        for bad in [
            "",
            "x",
            "12parsecs",
            "0",
            "-5MB",
            "150%",
            "0%",
            "1.5",
            "%",
            "MB",
        ] {
            assert!(bad.parse::<MemoryBudget>().is_err(), "{bad:?}");
        }
        let e = "lots".parse::<MemoryBudget>().unwrap_err().to_string();
        assert!(e.contains("lots") && e.contains("64MiB"), "{e}");
    }

    #[test]
    fn parses_meminfo() {
        let t = "MemTotal:       16318480 kB\nMemFree:          312064 kB\nMemAvailable:    8123456 kB\n";
        assert_eq!(parse_meminfo(t), Some(8123456 * 1024));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn parses_cgroup_files() {
        assert_eq!(parse_cgroup_limit("max\n"), None);
        assert_eq!(parse_cgroup_limit("536870912\n"), Some(512 << 20));
        assert_eq!(parse_cgroup_limit("9223372036854771712"), None);
        assert_eq!(parse_cgroup_limit("garbage"), None);
        assert_eq!(
            parse_cgroup_v2_path("12:cpu:/x\n0::/user.slice/app.scope\n"),
            Some("/user.slice/app.scope")
        );
        assert_eq!(parse_cgroup_v2_path("4:memory:/docker/abc\n"), None);
        assert_eq!(headroom(Some(100), Some(30)), Some(70));
        assert_eq!(headroom(Some(100), Some(300)), Some(0));
        assert_eq!(headroom(None, Some(30)), None);
    }

    #[test]
    fn resolves() {
        assert_eq!(MemoryBudget::Bytes(5).resolve(1000), Some(5));
        assert_eq!(MemoryBudget::Fraction(0.25).resolve(1000), Some(250));
        if cfg!(target_os = "linux") {
            let a = available_bytes().expect("Linux reports MemAvailable");
            assert!(a > 0);
            assert!(MemoryBudget::Auto.resolve(1).is_some());
        }
    }
}
