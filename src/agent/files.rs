//! The files the agent writes, and how: every write is atomic (a temporary file in the same
//! directory, fsync, rename over the old file, fsync of the directory), files are 0600 and
//! the directories the agent creates 0700.
//!
//! Layout (stable; documented in docs/agent.md):
//!
//! ```text
//! OUT_DIR/<namespace>/<name>/<key>          one file per target key, like a mounted Secret
//! STATE_DIR/<namespace>/<name>.json         the agent's state (refresh token, failures)
//! ```
//!
//! Temporary files start with `..tokensync-`: Kubernetes forbids Secret keys starting with
//! `..`, so they can never collide with a key, and globs such as `*` skip them.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Prefix of temporary files.
pub const TEMP_PREFIX: &str = "..tokensync-";

/// Where one credential's files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `OUT_DIR/<namespace>/<name>`.
    pub token_dir: PathBuf,
    /// `STATE_DIR/<namespace>/<name>.json`.
    pub state_file: PathBuf,
}

impl Layout {
    pub fn new(out_dir: &Path, state_dir: &Path, namespace: &str, name: &str) -> Layout {
        Layout {
            token_dir: out_dir.join(namespace).join(name),
            state_file: state_dir.join(namespace).join(format!("{name}.json")),
        }
    }
}

/// Whether `s` is usable as one path component named after a Kubernetes object: a DNS
/// subdomain's characters, starting and ending with a letter or digit (so never `.`, `..`
/// or a hidden name such as the default state directory).
pub fn is_safe_component(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    s.len() <= 253
        && s.bytes().next().is_some_and(alnum)
        && s.bytes().last().is_some_and(alnum)
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Whether `key` is a Secret key that can be a file name: `[-._a-zA-Z0-9]+`, not `.`/`..`
/// and not starting with `..` (the API server's rules, checked again because the agent
/// writes where the key says).
pub fn is_safe_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && !key.starts_with("..")
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// Creates `dir` and its missing parents with mode 0700, and makes `dir` itself 0700 even
/// when it existed (the agent owns it; parents given by the user are left alone).
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode != 0o700 {
        fs::set_permissions(dir, Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Replaces `path` with `contents` atomically: readers see the old file or the new one,
/// never a partial or empty one, also across a crash. The file is 0600.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| io::Error::other("no parent directory"))?;
    let mut temp =
        tempfile::Builder::new().prefix(TEMP_PREFIX).permissions(Permissions::from_mode(0o600)).tempfile_in(dir)?;
    temp.write_all(contents)?;
    temp.as_file().sync_all()?;
    // Dropping a NamedTempFile that was not persisted removes it: a failed write leaves
    // neither a partial file nor a stray temporary one.
    temp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Makes a rename or removal in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes the target keys of one credential into its directory, each file atomically and
/// only when its content differs, and removes the keys in `stale` that are no longer
/// published (keys the agent published before; other files are never touched). Returns
/// whether anything changed.
pub fn publish(token_dir: &Path, data: &BTreeMap<String, Vec<u8>>, stale: &[String]) -> io::Result<bool> {
    ensure_private_dir(token_dir)?;
    let mut changed = false;
    for (key, value) in data {
        if !is_safe_key(key) {
            return Err(io::Error::other(format!("key {key:?} cannot be a file name")));
        }
        let path = token_dir.join(key);
        if current_matches(&path, value)? {
            continue;
        }
        write_atomic(&path, value)?;
        changed = true;
    }
    for key in stale.iter().filter(|k| is_safe_key(k) && !data.contains_key(*k)) {
        match fs::remove_file(token_dir.join(key)) {
            Ok(()) => changed = true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if changed {
        sync_dir(token_dir)?;
    }
    Ok(changed)
}

/// Whether `path` is a 0600 regular file holding exactly `value`.
fn current_matches(path: &Path, value: &[u8]) -> io::Result<bool> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if !meta.is_file() || meta.permissions().mode() & 0o7777 != 0o600 || meta.len() != value.len() as u64 {
        return Ok(false);
    }
    Ok(fs::read(path)? == value)
}

/// Reads a file, None when it does not exist.
pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn atomic_writes_are_private_and_leave_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let token_dir = dir.path().join("ns").join("name");
        let data = BTreeMap::from([("access_token".to_owned(), b"one".to_vec()), ("b".to_owned(), b"x".to_vec())]);
        assert!(publish(&token_dir, &data, &[]).unwrap());
        assert!(!publish(&token_dir, &data, &[]).unwrap(), "unchanged data is not rewritten");
        let data = BTreeMap::from([("access_token".to_owned(), b"two".to_vec())]);
        assert!(publish(&token_dir, &data, &["b".to_owned(), "unrelated".to_owned()]).unwrap());
        assert_eq!(fs::read(token_dir.join("access_token")).unwrap(), b"two");
        assert!(!token_dir.join("b").exists());
        let names: Vec<_> = fs::read_dir(&token_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec!["access_token"]);
        assert_eq!(fs::metadata(token_dir.join("access_token")).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&token_dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(dir.path().join("ns")).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn loosened_permissions_are_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let data = BTreeMap::from([("k".to_owned(), b"v".to_vec())]);
        publish(dir.path(), &data, &[]).unwrap();
        fs::set_permissions(dir.path().join("k"), Permissions::from_mode(0o644)).unwrap();
        assert!(publish(dir.path(), &data, &[]).unwrap());
        assert_eq!(fs::metadata(dir.path().join("k")).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn unsafe_names_are_refused() {
        for bad in ["", ".", "..", "..data", "a/b", "../x", "a\0"] {
            assert!(!is_safe_key(bad), "{bad:?}");
        }
        for good in ["access_token", ".dockerconfigjson", "Authorization", "a-b.c"] {
            assert!(is_safe_key(good), "{good:?}");
        }
        for bad in ["", ".", "..", "A", "a/b", "a_b"] {
            assert!(!is_safe_component(bad), "{bad:?}");
        }
        assert!(is_safe_component("team-a") && is_safe_component("chatlayer.v2"));
    }
}
