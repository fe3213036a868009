//! The compiled-module cache: policy modules compiled to machine code, kept in
//! `policies.cache_dir` so that a restart does not compile unchanged modules again.
//!
//! # Format
//! `DIR/<sha256 of the module>.cwasm`, as `Component::serialize` wrote it; written as
//! `DIR/<sha256>.tmp` and renamed, so a crash never leaves half a file under the name.
//! Files the cache did not write are left alone, unless the directory is distrusted.
//!
//! # Trust
//! What is in the cache is loaded as native code and run in the relay's process: wasmtime
//! checks that a file was written by the same version and configuration, not that its code
//! is what compiling the module would give. Whoever can write the cache can run code as
//! the relay. So it is used only while nobody but the relay's user can have written it:
//! - The directory must be a directory of the relay's user (effective uid), not a
//!   symbolic link, and writable by nobody else; each entry a regular file of that user,
//!   not a link, writable by nobody else. Each is checked on a descriptor opened without
//!   following links (`O_NOFOLLOW`), and entries are opened, written, renamed and removed
//!   through the directory's descriptor (`openat` and the like), so no name can be swapped
//!   between a check and the use.
//! - A directory of the relay's user that others could write to (a `chmod -R`, a restore
//!   from a backup, a directory made by hand) is removed, with all in it, and made again
//!   empty and private, with a warning. Nothing in it can be trusted, not even a file of
//!   the relay's own: anyone who could write the directory could have renamed one module's
//!   code to another module's name, and that passes every check an entry gets. And a
//!   cache holds nothing that cannot be compiled again, so the relay repairs it (at the
//!   cost of compiling each module once) rather than refuse to start over it.
//! - A directory of another user, or a symbolic link, stops the relay at start with an
//!   error that says so. The relay can neither make such a place private (it cannot
//!   change another user's directory, and a link can be pointed elsewhere after it was
//!   checked) nor tell who else writes there; going on without a cache would hide what may
//!   be an attack. The postmaster removes it or points `cache_dir` elsewhere.
//! - An entry that fails its checks, or a directory that stopped being private while the
//!   relay ran, is not used (logged with the reason); the module is compiled instead.

use crate::private;
use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The file name suffix of a compiled module.
const SUFFIX: &str = ".cwasm";

/// The file name suffix of a compiled module being written.
const TMP_SUFFIX: &str = ".tmp";

/// The permission bits that let others than the owner write (group and others).
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// Why the cache directory cannot be used; the relay does not start.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "{}: a symbolic link; give the directory itself (a link could be pointed elsewhere once checked)",
        path.display()
    )]
    Symlink { path: PathBuf },
    #[error("{}: not a directory", path.display())]
    NotADirectory { path: PathBuf },
    /// Whoever owns it can put native code there for the relay to run.
    #[error(
        "{}: owned by uid {owner}, not by the relay's user (uid {relay}): compiled modules there could be anyone's code; remove it or point policies.cache_dir elsewhere",
        path.display()
    )]
    NotOwned {
        path: PathBuf,
        owner: u32,
        relay: u32,
    },
    /// Made again private, and yet found open: someone else is at work there.
    #[error("{}: not private even after it was made again ({why})", path.display())]
    StillOpen { path: PathBuf, why: Untrusted },
    #[error("{}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Why a directory or an entry of the cache is not trusted.
#[derive(Debug, thiserror::Error)]
pub enum Untrusted {
    #[error("a symbolic link")]
    Link,
    #[error("not a regular file")]
    NotAFile,
    #[error("owned by uid {owner}, not the relay's user (uid {relay})")]
    Owner { owner: u32, relay: u32 },
    #[error("writable by group or others (mode {0:o})")]
    Writable(u32),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The cache directory, held open for the life of the relay.
#[derive(Debug)]
pub struct ModuleCache {
    path: PathBuf,
    /// The directory, opened without following a link: every entry is reached through it.
    dir: File,
    /// The relay's user (its effective uid), the one owner the cache and its entries may
    /// have.
    owner: u32,
}

impl ModuleCache {
    /// Opens the cache at `path`, creating it (0700, and its missing parents) if needed;
    /// one that others could write to is made again, empty (see the module doc); one that
    /// is another user's, or a symbolic link, is refused.
    pub fn open(path: &Path) -> Result<ModuleCache, CacheError> {
        let owner = effective_uid();
        let dir = match open_dir(path) {
            Err(CacheError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                private::create_dir_all(path).map_err(|e| io_error(path, "creating", e))?;
                open_dir(path)?
            }
            opened => opened?,
        };
        let cache = ModuleCache {
            path: path.to_path_buf(),
            dir,
            owner,
        };
        match cache.directory_is_private() {
            Ok(()) => {}
            Err(Untrusted::Owner { owner, relay }) => {
                return Err(CacheError::NotOwned {
                    path: cache.path,
                    owner,
                    relay,
                });
            }
            Err(Untrusted::Io(e)) => return Err(io_error(path, "reading its owner and mode", e)),
            Err(why) => {
                tracing::warn!(
                    dir = %path.display(),
                    "compiled-module cache not trusted, {why}: what is in it could be anyone's code, so none of it is loaded; made again, empty and private (0700)"
                );
                // Closed to others at once, so nothing more is put there while it is
                // emptied (and a sticky bit no longer keeps others' files from removal).
                cache
                    .dir
                    .set_permissions(fs::Permissions::from_mode(private::DIR_MODE))
                    .map_err(|e| io_error(path, "making private", e))?;
                drop(cache);
                return ModuleCache::make_again(path, owner);
            }
        }
        // Readable by others but writable by nobody else (as a version of the relay that
        // left modes to the umask made it): nobody else can have changed it; narrowed.
        let mode = cache
            .mode()
            .map_err(|e| io_error(path, "reading the mode", e))?;
        if mode & private::OPEN_TO_OTHERS != 0 {
            cache
                .dir
                .set_permissions(fs::Permissions::from_mode(private::DIR_MODE))
                .map_err(|e| io_error(path, "making private", e))?;
        }
        Ok(cache)
    }

    /// Removes a distrusted cache directory with all in it, and makes it again, empty.
    fn make_again(path: &Path, owner: u32) -> Result<ModuleCache, CacheError> {
        // std's remove_dir_all works through descriptors and never follows a link inside.
        fs::remove_dir_all(path).map_err(|e| io_error(path, "removing", e))?;
        // Not recursive: were anything put under the name in between, this fails.
        private::create_dir(path).map_err(|e| io_error(path, "making again", e))?;
        let cache = ModuleCache {
            path: path.to_path_buf(),
            dir: open_dir(path)?,
            owner,
        };
        match cache.directory_is_private() {
            Ok(()) => Ok(cache),
            Err(why) => Err(CacheError::StillOpen {
                path: path.to_path_buf(),
                why,
            }),
        }
    }

    /// The compiled module kept for the module whose SHA-256 is `hash`: `None` when there
    /// is none, and when there is one that cannot be trusted (logged with the reason, and
    /// removed) — the module is then compiled again.
    pub fn load(&self, hash: &str) -> Option<Vec<u8>> {
        let name = file_name(hash, SUFFIX)?;
        if let Err(why) = self.directory_is_private() {
            tracing::warn!(dir = %self.path.display(), "compiled-module cache not trusted, {why}: not used until the relay restarts");
            return None;
        }
        // O_NONBLOCK: a FIFO under the name is opened without waiting for a writer, and
        // then refused as not a regular file; no effect on a regular file.
        let read = self
            .open_at(&name, libc::O_RDONLY | libc::O_NONBLOCK, 0)
            .map_err(Untrusted::from_open)
            .and_then(|file| self.entry_is_trusted(&file).map(|()| file))
            .and_then(|mut file| {
                let mut code = Vec::new();
                file.read_to_end(&mut code)?;
                Ok(code)
            });
        match read {
            Ok(code) => Some(code),
            Err(Untrusted::Io(e)) if e.kind() == io::ErrorKind::NotFound => None,
            Err(why) => {
                tracing::warn!(path = %self.path.join(&name).display(), "compiled module not loaded: {why}; compiling");
                let _ = self.unlink_at(&name);
                None
            }
        }
    }

    /// Keeps the compiled module for the module whose SHA-256 is `hash`.
    pub fn store(&self, hash: &str, code: &[u8]) -> io::Result<()> {
        let (Some(name), Some(tmp)) = (file_name(hash, SUFFIX), file_name(hash, TMP_SUFFIX)) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{hash}` is not a SHA-256 in hex"),
            ));
        };
        self.directory_is_private()
            .map_err(|why| io::Error::new(io::ErrorKind::PermissionDenied, why.to_string()))?;
        // Whatever is under the temporary name (a crash's leftover) goes first: O_EXCL then
        // creates a new file or fails, and never writes through a link.
        match self.unlink_at(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = self.open_at(
            &tmp,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            private::FILE_MODE,
        )?;
        file.write_all(code)?;
        drop(file);
        self.rename_at(&tmp, &name)
    }

    /// Removes the compiled module kept for `hash` (wasmtime refused it).
    pub fn remove(&self, hash: &str) {
        if let Some(name) = file_name(hash, SUFFIX) {
            let _ = self.unlink_at(&name);
        }
    }

    /// Removes the compiled modules (and half-written ones) of modules other than `keep`,
    /// so the cache holds what is running and no more.
    pub fn retain(&self, keep: &HashSet<String>) {
        // Listed by name (std lists no directory by descriptor); each is removed through
        // the descriptor, so a name listed from anywhere else removes nothing but here.
        let Ok(entries) = fs::read_dir(&self.path) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let hash = name
                .strip_suffix(SUFFIX)
                .or_else(|| name.strip_suffix(TMP_SUFFIX));
            if hash.is_some_and(|h| is_hash(h) && !keep.contains(h)) {
                let _ = self.unlink_at(&name);
            }
        }
    }

    /// The permission bits of the directory, as they are now.
    fn mode(&self) -> io::Result<u32> {
        Ok(self.dir.metadata()?.mode() & 0o7777)
    }

    /// Is the directory the relay user's, and writable by nobody else, now?
    fn directory_is_private(&self) -> Result<(), Untrusted> {
        let meta = self.dir.metadata()?;
        self.owned_and_closed(&meta)
    }

    /// Is an opened entry a regular file of the relay's user that nobody else can write?
    fn entry_is_trusted(&self, file: &File) -> Result<(), Untrusted> {
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return Err(Untrusted::NotAFile);
        }
        self.owned_and_closed(&meta)
    }

    fn owned_and_closed(&self, meta: &fs::Metadata) -> Result<(), Untrusted> {
        if meta.uid() != self.owner {
            return Err(Untrusted::Owner {
                owner: meta.uid(),
                relay: self.owner,
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & WRITABLE_BY_OTHERS != 0 {
            return Err(Untrusted::Writable(mode));
        }
        Ok(())
    }

    /// Opens `name` in the cache directory; a link there is refused, never followed.
    fn open_at(&self, name: &str, flags: libc::c_int, mode: u32) -> io::Result<File> {
        let name = c_name(name)?;
        // SAFETY: `name` is a NUL-terminated string alive across the call and `self.dir` a
        // descriptor open as long as `self`; openat reads nothing else, and the mode is the
        // one variadic argument O_CREAT reads (ignored without it).
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                name.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened here and belongs to nothing else; the File owns it.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Removes `name` from the cache directory (a link itself, never what it points to).
    fn unlink_at(&self, name: &str) -> io::Result<()> {
        let name = c_name(name)?;
        // SAFETY: as in `open_at`: a live NUL-terminated name and an open descriptor.
        if unsafe { libc::unlinkat(self.dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Renames `from` over `to`, both in the cache directory.
    fn rename_at(&self, from: &str, to: &str) -> io::Result<()> {
        let (from, to) = (c_name(from)?, c_name(to)?);
        let dir = self.dir.as_raw_fd();
        // SAFETY: as in `open_at`: live NUL-terminated names and an open descriptor.
        if unsafe { libc::renameat(dir, from.as_ptr(), dir, to.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Untrusted {
    /// Why an entry could not be opened: a link is named as such (O_NOFOLLOW refuses one
    /// with ELOOP).
    fn from_open(e: io::Error) -> Untrusted {
        if e.raw_os_error() == Some(libc::ELOOP) {
            Untrusted::Link
        } else {
            Untrusted::Io(e)
        }
    }
}

/// Opens the directory at `path`, refusing a link there rather than following it.
fn open_dir(path: &Path) -> Result<File, CacheError> {
    let path_buf = || path.to_path_buf();
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // Linux answers a link under O_DIRECTORY | O_NOFOLLOW with ENOTDIR (a link is
            // not a directory) rather than O_NOFOLLOW's ELOOP: look, to say which it is.
            Some(libc::ELOOP) => CacheError::Symlink { path: path_buf() },
            Some(libc::ENOTDIR)
                if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) =>
            {
                CacheError::Symlink { path: path_buf() }
            }
            Some(libc::ENOTDIR) => CacheError::NotADirectory { path: path_buf() },
            _ => io_error(path, "opening", e),
        })
}

/// The relay's user.
fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    unsafe { libc::geteuid() }
}

/// Is `s` a SHA-256 in lower-case hex, as `content_hash` writes it?
fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The name of a cache file for `hash`; `None` when `hash` is not one, so that no name
/// from elsewhere reaches outside the directory.
fn file_name(hash: &str, suffix: &str) -> Option<String> {
    is_hash(hash).then(|| format!("{hash}{suffix}"))
}

fn c_name(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a name"))
}

fn io_error(path: &Path, action: &'static str, source: io::Error) -> CacheError {
    CacheError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const OTHER: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn keeps_and_gives_back_compiled_modules_in_a_private_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool/cache");
        let cache = ModuleCache::open(&path).unwrap();
        cache.store(HASH, b"code").unwrap();
        assert_eq!(cache.load(HASH).as_deref(), Some(&b"code"[..]));
        assert_eq!(cache.load(OTHER), None);
        assert_eq!(mode(&path), 0o700);
        assert_eq!(mode(&path.join(format!("{HASH}.cwasm"))), 0o600);
        cache.store(OTHER, b"other").unwrap();
        cache.retain(&HashSet::from([OTHER.to_string()]));
        assert_eq!(cache.load(HASH), None);
        assert_eq!(cache.load(OTHER).as_deref(), Some(&b"other"[..]));
        assert!(cache.load("../escape").is_none() && cache.store("../escape", b"x").is_err());
    }

    #[test]
    fn a_directory_others_could_write_is_made_again_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        ModuleCache::open(&path)
            .unwrap()
            .store(HASH, b"ours")
            .unwrap();
        // Opened to everyone, and something put there: every file is distrusted, the
        // relay's own included (it may have been renamed by someone else).
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).unwrap();
        fs::write(path.join("planted"), b"x").unwrap();
        fs::create_dir(path.join("sub")).unwrap();
        let cache = ModuleCache::open(&path).unwrap();
        assert_eq!(mode(&path), 0o700);
        assert_eq!(cache.load(HASH), None);
        assert_eq!(fs::read_dir(&path).unwrap().count(), 0);
    }

    #[test]
    fn a_directory_only_others_could_read_is_narrowed_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        ModuleCache::open(&path)
            .unwrap()
            .store(HASH, b"ours")
            .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        let cache = ModuleCache::open(&path).unwrap();
        assert_eq!(mode(&path), 0o700);
        assert_eq!(cache.load(HASH).as_deref(), Some(&b"ours"[..]));
    }

    #[test]
    fn a_link_or_another_users_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = dir.path().join("cache");
        symlink(&real, &link).unwrap();
        assert!(matches!(
            ModuleCache::open(&link),
            Err(CacheError::Symlink { .. })
        ));
        fs::write(dir.path().join("file"), b"").unwrap();
        assert!(matches!(
            ModuleCache::open(&dir.path().join("file")),
            Err(CacheError::NotADirectory { .. })
        ));
        // Another user's: only root can make one for the test.
        if effective_uid() == 0 {
            std::os::unix::fs::chown(&real, Some(65534), None).unwrap();
            let e = ModuleCache::open(&real).unwrap_err();
            assert!(
                matches!(
                    e,
                    CacheError::NotOwned {
                        owner: 65534,
                        relay: 0,
                        ..
                    }
                ),
                "{e}"
            );
            assert!(e.to_string().contains("not by the relay's user"), "{e}");
        }
    }

    #[test]
    fn an_entry_that_is_a_link_or_open_to_others_is_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        let cache = ModuleCache::open(&path).unwrap();
        // A link to a file of the relay's, as code for HASH.
        fs::write(dir.path().join("elsewhere"), b"code").unwrap();
        symlink(
            dir.path().join("elsewhere"),
            path.join(format!("{HASH}.cwasm")),
        )
        .unwrap();
        assert_eq!(cache.load(HASH), None);
        assert!(fs::symlink_metadata(path.join(format!("{HASH}.cwasm"))).is_err());
        assert!(
            dir.path().join("elsewhere").exists(),
            "the link's target is left"
        );
        // A file others could write.
        cache.store(OTHER, b"code").unwrap();
        let other = path.join(format!("{OTHER}.cwasm"));
        fs::set_permissions(&other, fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(cache.load(OTHER), None);
        assert!(!other.exists());
        // A FIFO: refused at once, not waited on.
        let fifo = CString::new(
            path.join(format!("{HASH}.cwasm"))
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: a NUL-terminated path alive across the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(cache.load(HASH), None);
    }

    #[test]
    fn a_directory_opened_while_running_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        let cache = ModuleCache::open(&path).unwrap();
        cache.store(HASH, b"code").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(cache.load(HASH), None);
        assert!(cache.store(OTHER, b"code").is_err());
    }
}
