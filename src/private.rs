//! Files only their owner may read: the check made before a secret is read
//! from a file, and the one writer of secrets and private keys (mode 0600).

use std::path::Path;

use anyhow::{bail, Context};

/// What [`write`] does when the file exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Fail: the file must be new.
    Refuse,
    /// Replace its contents, and make it private if it was not.
    Replace,
}

/// Writes `bytes` to `path`, readable by its owner only.
pub fn write(path: &Path, bytes: &[u8], existing: Existing) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    match existing {
        Existing::Refuse => opts.create_new(true),
        Existing::Replace => opts.create(true).truncate(true),
    };
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts
        .open(path)
        .with_context(|| format!("could not create {}", path.display()))?;
    // The mode above applies only to a new file; an old file being replaced
    // is made private too.
    #[cfg(unix)]
    if existing == Existing::Replace {
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    file.write_all(bytes)
        .with_context(|| format!("could not write {}", path.display()))
}

/// Refuses `path` (a `what`, for the message) if other users may read it.
pub fn ensure_private(path: &Path, what: &str) -> anyhow::Result<()> {
    match shared_mode(path) {
        Some(mode) => bail!(
            "{what} {} is readable by other users (mode {mode:o}); run: chmod 600 {}",
            path.display(),
            path.display()
        ),
        None => Ok(()),
    }
}

/// The permission bits of `path` if group or others may read it (Unix).
pub fn shared_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o044 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_are_private_and_replaced_only_when_asked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write(&path, b"one", Existing::Refuse).unwrap();
        assert_eq!(shared_mode(&path), None);
        assert!(write(&path, b"two", Existing::Refuse).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"one");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(shared_mode(&path), Some(0o644));
        let err = ensure_private(&path, "key file").unwrap_err().to_string();
        assert!(err.contains("readable by other users (mode 644)"), "{err}");
        write(&path, b"two", Existing::Replace).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(ensure_private(&path, "key file").is_ok());
    }
}
