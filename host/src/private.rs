//! Files and folders private to the relay's user, whatever umask it was started with:
//! queued mail, the store (contact details, password hashes), the control socket and
//! compiled modules are nobody else's to read or to change.
//!
//! The mode is given when a file or folder is created, never left to the umask (which a
//! service manager or a shell may set to anything, 000 included) and never narrowed
//! afterwards, which would leave a moment when it is open. The umask can still narrow it.

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// A folder of the relay's: its user may list, enter and change it; nobody else anything.
pub const DIR_MODE: u32 = 0o700;

/// A file of the relay's: its user may read and write it; nobody else anything.
pub const FILE_MODE: u32 = 0o600;

/// The permission bits that let others than the owner in (group and others).
pub const OPEN_TO_OTHERS: u32 = 0o077;

/// Creates `dir` and whichever of its parents are missing, each [`DIR_MODE`]; what
/// exists already is left as it is.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Creates `dir`, [`DIR_MODE`]; fails if anything is there already (a folder someone else
/// made, a planted symbolic link), so a folder this returns is one the relay made.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(dir)
}

/// Creates a new private folder of an unguessable name, `PREFIX-<64 random bits>`, in the
/// system's temporary directory: [`create_dir`] fails on anything already there (a planted
/// symbolic link included), and it is private from its creation, not narrowed after while
/// whoever watches the temporary directory could write to it.
pub fn create_temp_dir(prefix: &str) -> io::Result<std::path::PathBuf> {
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|e| io::Error::other(format!("random: {e}")))?;
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("{prefix}-{suffix}"));
    create_dir(&dir)?;
    Ok(dir)
}

/// Options that create a file [`FILE_MODE`] (a file that exists keeps its mode).
pub fn open_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Narrows a folder that is the relay's alone (the spool's `tmp/` and `queue/`) to
/// [`DIR_MODE`], in case it was made open: by a version of the relay that left modes to
/// the umask, or by a postmaster's copy or restore. Changes nothing that is private.
pub fn restrict_dir(dir: &Path) -> io::Result<()> {
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & OPEN_TO_OTHERS == 0 {
        return Ok(());
    }
    tracing::info!(dir = %dir.display(), mode = format_args!("{:o}", mode & 0o7777), "made private (0700)");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn folders_and_files_are_created_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        let file = nested.join("f");
        // With the usual umask (022) these would be 0755 and 0644 if left to it. (A umask
        // of 000 is the end-to-end tests' business: it is the process's, and tests here
        // run in parallel.)
        create_dir_all(&nested).unwrap();
        open_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&file)
            .unwrap();
        for (path, mode) in [
            (dir.path().join("a"), DIR_MODE),
            (nested, DIR_MODE),
            (file, FILE_MODE),
        ] {
            let got = std::fs::metadata(&path).unwrap().mode() & 0o7777;
            assert_eq!(got, mode, "{}: {got:o}", path.display());
        }
    }

    #[test]
    fn an_open_folder_is_narrowed() {
        let dir = tempfile::tempdir().unwrap();
        let queue = dir.path().join("queue");
        std::fs::create_dir(&queue).unwrap();
        std::fs::set_permissions(&queue, std::fs::Permissions::from_mode(0o755)).unwrap();
        restrict_dir(&queue).unwrap();
        assert_eq!(std::fs::metadata(&queue).unwrap().mode() & 0o7777, DIR_MODE);
    }
}
