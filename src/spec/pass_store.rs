//! Keeps the learned pass times (the verifier's, the drafter's) between processes, so that a
//! new `llmcad generate` sizes its first trees from what earlier runs learned: one small JSON
//! file per pair of models and how they run (device, CPU kernels, threads, precision), in the
//! user's cache directory. Drafters requantized at load are kept there too
//! (`requantized_file`).

use super::cost::PassTimes;
use std::path::{Path, PathBuf};

/// Where pass times (and requantized drafters) are kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PassStore {
    /// `$LLMCAD_CACHE_DIR`, else the platform's cache directory (`~/.cache/llmcad` on Linux);
    /// nowhere when neither exists.
    #[default]
    Default,
    /// This directory.
    Dir(PathBuf),
    /// Nowhere: every process learns from scratch.
    Off,
}

impl PassStore {
    fn dir(&self) -> Option<PathBuf> {
        match self {
            PassStore::Default => std::env::var_os("LLMCAD_CACHE_DIR")
                .map(PathBuf::from)
                .or_else(|| dirs::cache_dir().map(|d| d.join("llmcad"))),
            PassStore::Dir(d) => Some(d.clone()),
            PassStore::Off => None,
        }
    }

    /// The file for `key` (what the times depend on: model, device, kernels, threads).
    pub fn file(&self, key: &str) -> Option<PathBuf> {
        self.dir().map(|d| {
            d.join("pass-times")
                .join(format!("{}.json", file_name(key)))
        })
    }

    /// Where a model requantized at load is kept; `key` names the source file and the type.
    pub fn requantized_file(&self, key: &str) -> Option<PathBuf> {
        self.dir().map(|d| {
            d.join("requantized")
                .join(format!("{}.gguf", file_name(key)))
        })
    }
}

/// Longest file name made of a key (file systems allow 255 bytes).
const MAX_NAME: usize = 160;

/// `key` as a file name: anything but letters, digits, dots and dashes becomes `_`; a long key
/// keeps its start and ends in a hash of the whole.
fn file_name(key: &str) -> String {
    let name: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.len() <= MAX_NAME {
        return name;
    }
    use std::hash::{Hash, Hasher};
    let mut hash = std::hash::DefaultHasher::new();
    key.hash(&mut hash);
    format!("{}-{:016x}", &name[..MAX_NAME - 17], hash.finish())
}

/// The times kept at `path`; nothing when there are none or the file is unreadable (it is
/// only a head start).
pub fn load(path: &Path) -> PassTimes {
    // a FIFO or device put in the cache's place is refused rather than read without end
    let Ok(Some(bytes)) = crate::format::read_optional(path) else {
        return PassTimes::default();
    };
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        log::warn!("ignoring {}: {e}", path.display());
        PassTimes::default()
    })
}

/// Keeps `times` at `path` (written to a temporary file and renamed, so that a reader never
/// sees half a file).
pub fn save(path: &Path, times: &PassTimes) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("json.{}", std::process::id()));
    std::fs::write(
        &tmp,
        serde_json::to_vec(times).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_survive_a_round_trip_and_bad_files_are_ignored() {
        let dir = std::env::temp_dir().join(format!("llmcad-pass-store-{}", std::process::id()));
        let store = PassStore::Dir(dir.clone());
        let path = store.file("model.gguf 123/cpu (2 threads)").unwrap();
        assert!(path.starts_with(&dir));
        assert!(!path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .contains(['/', ' ']));
        assert_eq!(load(&path), PassTimes::default(), "no file yet");
        let times = PassTimes::from_points([(1, 80.0), (8, 160.0)]);
        save(&path, &times).unwrap();
        assert_eq!(load(&path).points(), times.points());
        std::fs::write(&path, "{not json").unwrap();
        assert_eq!(load(&path), PassTimes::default());
        // a FIFO in the file's place would block a plain read until a writer comes
        std::fs::remove_file(&path).unwrap();
        let made = std::process::Command::new("mkfifo").arg(&path).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        assert_eq!(load(&path), PassTimes::default());
        assert_eq!(PassStore::Off.file("x"), None);
        // long keys: short names, still one per key
        let long = |n: usize| store.file(&"a".repeat(n)).unwrap();
        assert!(long(300).file_name().unwrap().len() <= MAX_NAME + ".json".len());
        assert_ne!(long(300), long(301));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
