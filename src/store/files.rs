//! Private files on disk: the database files, and the helpers composition uses for the
//! data, key and log directories. Directories are 0700 and files 0600 (on Unix), so no
//! other local user reads PHI ciphertext, WAL pages, logs or keys; what an older release
//! left readable by others is tightened at start.

use std::path::Path;

/// Files SQLite keeps beside its database.
const SQLITE_SIDE_FILES: &[&str] = &["-wal", "-shm", "-journal"];

/// Creates `dir` and its missing parents 0700. With `tighten`, an existing `dir` readable
/// by group or others is made 0700 too; a sticky shared directory such as `/tmp` is left
/// as it is, and so is one this process may not change (it says so in the log).
pub fn private_dir(dir: &Path, tighten: bool) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
        if tighten && mode & 0o077 != 0 && mode & 0o1000 == 0 {
            restrict(dir, 0o700, mode)?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let _ = tighten;
        std::fs::create_dir_all(dir)
    }
}

/// Makes an existing file 0600 if group or others may read or write it; a missing file
/// (or a symbolic link) is left alone, and so is one this process may not change.
pub fn private_file(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_file() && mode & 0o077 != 0 {
            restrict(path, 0o600, mode)?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

#[cfg(unix)]
fn restrict(path: &Path, to: u32, was: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(to)) {
        Ok(()) => {
            tracing::warn!(path = %path.display(), was = %format!("{was:o}"), now = %format!("{to:o}"), "permissions tightened");
            Ok(())
        }
        // Someone else's file, or a read-only mount (keys handed in by an orchestrator).
        Err(e) if matches!(e.kind(), std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem) => {
            tracing::warn!(path = %path.display(), mode = %format!("{was:o}"), "readable by others and not ours to change");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Prepares a SQLite database path before the first connection: a missing directory is
/// created 0700, a missing database file is created empty and 0600 (SQLite gives its
/// `-wal`, `-shm` and `-journal` files the database file's mode), and an existing database
/// and side files readable by others are made 0600.
pub fn prepare_sqlite(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        private_dir(dir, false)?;
    }
    // Only a missing file is opened here: closing a descriptor of a database this process
    // already has connections to would drop their POSIX locks (SQLite's own warning).
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(file) => drop(file),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    private_file(path)?;
    for suffix in SQLITE_SIDE_FILES {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        private_file(Path::new(&side))?;
    }
    Ok(())
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn databases_are_created_private_and_loose_ones_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a").join("data");
        let db = data.join("carevault.db");
        prepare_sqlite(&db).unwrap();
        assert_eq!((mode(&data), mode(&db)), (0o700, 0o600));
        let wal = data.join("carevault.db-wal");
        std::fs::write(&wal, b"").unwrap();
        for path in [&db, &wal] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        prepare_sqlite(&db).unwrap();
        assert_eq!((mode(&db), mode(&wal)), (0o600, 0o600));
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&data, false).unwrap();
        assert_eq!(mode(&data), 0o755, "left as it is without tighten");
        private_dir(&data, true).unwrap();
        assert_eq!(mode(&data), 0o700);
    }
}
