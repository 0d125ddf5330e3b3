//! Files only their owner may read: the check made before a secret is read
//! from a file, and the one writer of secrets and private keys (mode 0600).

use std::path::Path;

use anyhow::{bail, Context};

/// What [`write()`] does when the file exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Fail: the file must be new.
    Refuse,
    /// Replace its contents, and make it private if it was not.
    Replace,
}

/// Writes `bytes` to `path`, readable by its owner only. A file replaced
/// is replaced whole: the bytes go to a new file beside it, which is then
/// renamed over it, so a symbolic link at `path` is replaced rather than
/// followed, and no reader sees half a file.
pub fn write(path: &Path, bytes: &[u8], existing: Existing) -> anyhow::Result<()> {
    match existing {
        Existing::Refuse => write_new(path, bytes),
        Existing::Replace => {
            let name = path
                .file_name()
                .with_context(|| format!("{} names no file", path.display()))?;
            let mut temp_name = std::ffi::OsString::from(".");
            temp_name.push(name);
            temp_name.push(format!(".{:016x}.new", rand::random::<u64>()));
            let temp = path.with_file_name(temp_name);
            write_new(&temp, bytes)?;
            std::fs::rename(&temp, path).map_err(|err| {
                let _ = std::fs::remove_file(&temp);
                anyhow::Error::new(err).context(format!("could not write {}", path.display()))
            })
        }
    }
}

/// Writes `bytes` to `path`, which must not exist, at mode 0600.
fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts
        .open(path)
        .with_context(|| format!("could not create {}", path.display()))?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(err) = written {
        let _ = std::fs::remove_file(path);
        return Err(err).with_context(|| format!("could not write {}", path.display()));
    }
    Ok(())
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
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no file left over"
        );
    }

    #[test]
    fn a_link_in_the_way_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let link = dir.path().join("link.token");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        write(&link, b"token", Existing::Replace).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(std::fs::read(&link).unwrap(), b"token");
        // Refuse does not follow one either.
        std::os::unix::fs::symlink(&victim, dir.path().join("other")).unwrap();
        assert!(write(&dir.path().join("other"), b"x", Existing::Refuse).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }
}
