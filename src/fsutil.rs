//! The one way kh processes write their own private state files (the
//! agent's identity and pin, the coordinator's `admin.khconfig`).
//!
//! Host configuration is not written here: that goes through `kh-host`'s
//! `Host` seam, under the host root.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The suffix of the temporary file a write goes through, beside its target.
pub const TEMP_SUFFIX: &str = ".kh-tmp";

/// The temporary file [`write_private_atomic`] writes before the rename.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(TEMP_SUFFIX);
    path.with_file_name(name)
}

/// Writes `bytes` to `path` with `mode`, so that a crash at any point leaves
/// either the old file or the whole new one, never half a credential.
///
/// The bytes go to a temporary file beside the target (created with `mode`,
/// so they are never readable by others), which is synced, renamed over the
/// target, and then the directory is synced so the rename itself survives a
/// power loss. A temporary file left by an earlier crash is replaced. The
/// error names the step that failed; callers add the path.
pub fn write_private_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = temp_path(path);
    let context = |what: String| {
        move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"))
    };
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(context(format!(
                "cannot remove the leftover temporary file {}",
                tmp.display()
            ))(e))
        }
    }
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(context(format!(
                "cannot create the temporary file {}",
                tmp.display()
            )))?;
        // The umask may have narrowed the mode at creation; the caller asked
        // for exactly this one.
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(context(format!(
                "cannot set mode {mode:o} on {}",
                tmp.display()
            )))?;
        f.write_all(bytes)
            .map_err(context(format!("cannot write {}", tmp.display())))?;
        f.sync_all()
            .map_err(context(format!("cannot sync {}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(context(format!(
            "cannot rename {} into place",
            tmp.display()
        )))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return written;
    }
    // Best effort: the file is complete and in place either way, and some
    // file systems refuse to sync a directory.
    if let Some(parent) = path.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_the_whole_file_with_its_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        write_private_atomic(&path, &bytes, 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(entries(dir.path()), ["key.pem"]);
    }

    #[test]
    fn replaces_an_existing_file_and_a_leftover_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enrollment.yaml");
        std::fs::write(&path, "old content that is longer than the new one\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        // A crash between creating and renaming the temporary file.
        std::fs::write(temp_path(&path), "half").unwrap();
        write_private_atomic(&path, b"new\n", 0o640).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(mode(&path), 0o640);
        assert_eq!(entries(dir.path()), ["enrollment.yaml"]);
    }

    #[test]
    fn a_failed_write_names_the_step_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a non-empty directory, so the rename fails after the
        // temporary file was written.
        let path = dir.path().join("taken");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), "x").unwrap();
        let err = write_private_atomic(&path, b"secret", 0o600).unwrap_err();
        assert!(err.to_string().contains("into place"), "{err}");
        assert_eq!(entries(dir.path()), ["taken"]);
    }
}
