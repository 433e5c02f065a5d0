//! Sizes and rates as people write them ("64MiB", "1.5GB", "25%", "500MB/s"), in bytes, so a
//! budget from anywhere (the CLI, an engine-level `MemoryBudget`) plugs into `GpuOptions`.

use crate::error::{Error, Result};

/// Bytes in `s`: a number with an optional unit (B, KB, MB, GB, TB in powers of 1000; KiB,
/// MiB, GiB, TiB in powers of 1024; case-insensitive, "K"/"M"/"G" alone are binary), or a
/// percentage of `total` (for a weight budget: the model's weight bytes).
pub fn parse_size(s: &str, total: u64) -> Result<u64> {
    let t = s.trim();
    if let Some(p) = t.strip_suffix('%') {
        let f: f64 = p.trim().parse().map_err(|_| bad(s, "a size"))?;
        if !(0.0..=100_000.0).contains(&f) {
            return Err(bad(s, "a size"));
        }
        return Ok((total as f64 * f / 100.0).round() as u64);
    }
    let (num, unit) = split_unit(t);
    let v: f64 = num.parse().map_err(|_| bad(s, "a size"))?;
    let mult = unit_bytes(unit).ok_or_else(|| bad(s, "a size"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(bad(s, "a size"));
    }
    Ok((v * mult).round() as u64)
}

/// Bytes per second in `s`: a size as in [`parse_size`] followed by "/s" ("500MB/s",
/// "1.5GB/s", "2GiB/s").
pub fn parse_rate(s: &str) -> Result<f64> {
    let t = s.trim();
    let body = t
        .strip_suffix("/s")
        .or_else(|| t.strip_suffix("/S"))
        .ok_or_else(|| bad(s, "a rate"))?;
    let (num, unit) = split_unit(body.trim());
    let v: f64 = num.parse().map_err(|_| bad(s, "a rate"))?;
    let mult = unit_bytes(unit).ok_or_else(|| bad(s, "a rate"))?;
    let r = v * mult;
    if !r.is_finite() || r <= 0.0 {
        return Err(bad(s, "a rate"));
    }
    Ok(r)
}

/// Emulated storage rates from a slow SD card to beyond any real device: 1 MB/s to 1 TB/s.
/// Slower would take hours for one pass over a model; faster emulates nothing.
const IO_BANDWIDTH_RANGE: std::ops::RangeInclusive<f64> = 1e6..=1e12;

/// Fails unless `bytes_per_s` is a storage rate worth emulating, naming the accepted range.
pub fn check_io_bandwidth(bytes_per_s: f64) -> Result<()> {
    if IO_BANDWIDTH_RANGE.contains(&bytes_per_s) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "an emulated IO bandwidth of {bytes_per_s} bytes/s is out of range: it takes 1MB/s \
             to 1TB/s"
        )))
    }
}

/// "12.5 MiB" for messages.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn bad(s: &str, what: &str) -> Error {
    Error::InvalidArgument(format!(
        "{s:?} is not {what} (examples: 64MiB, 1.5GB, 25%{})",
        if what == "a rate" { ", 500MB/s" } else { "" }
    ))
}

fn split_unit(t: &str) -> (&str, &str) {
    let i = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    (t[..i].trim(), t[i..].trim())
}

fn unit_bytes(u: &str) -> Option<f64> {
    let k = 1024f64;
    Some(match u.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "k" | "kib" => k,
        "m" | "mib" => k * k,
        "g" | "gib" => k * k * k,
        "t" | "tib" => k * k * k * k,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_bandwidth_takes_real_storage_rates_only() {
        assert!(check_io_bandwidth(parse_rate("500MB/s").unwrap()).is_ok());
        for absurd in ["1B/s", "999KB/s", "2TB/s"] {
            let e = check_io_bandwidth(parse_rate(absurd).unwrap()).unwrap_err();
            assert!(e.to_string().contains("1MB/s to 1TB/s"), "{absurd}: {e}");
        }
        assert!(check_io_bandwidth(f64::NAN).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB", 0).unwrap(), 64 << 20);
        assert_eq!(parse_size("1.5GB", 0).unwrap(), 1_500_000_000);
        assert_eq!(parse_size("25%", 1000).unwrap(), 250);
        assert_eq!(parse_size(" 12.5 % ", 1000).unwrap(), 125);
        assert_eq!(parse_size("4096", 0).unwrap(), 4096);
        assert_eq!(parse_size("2k", 0).unwrap(), 2048);
        for bad in ["", "MiB", "-1MB", "12 parsecs", "x%", "1e999GB"] {
            assert!(parse_size(bad, 100).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("500MB/s").unwrap(), 5e8);
        assert_eq!(parse_rate("1.5GB/s").unwrap(), 1.5e9);
        assert_eq!(parse_rate("1GiB/s").unwrap(), (1u64 << 30) as f64);
        for bad in ["500MB", "0MB/s", "fast/s", "/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
