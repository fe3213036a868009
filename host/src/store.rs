//! The embedded store: one SQLite database for what the postmaster's commands and the
//! running relay both change (the relay registry, the users of the submission listeners).
//!
//! SQLite because these are small tables that two processes write: its locking and
//! transactions give that for free, and a postmaster can read or back it up with the
//! `sqlite3` tool. Each part creates its own tables (see `registry::store`, `auth::users`).

use crate::private;
use anyhow::Context;
use rusqlite::Connection;
use std::path::Path;
use std::time::Duration;

/// The configured store's path, if there is a store there: a command that only reads (or
/// removes) must not create an empty one where a wrong `--config` points.
pub fn existing(config: &crate::config::Config) -> anyhow::Result<std::path::PathBuf> {
    let db = config.store_db();
    if !db.exists() {
        anyhow::bail!(
            "no store at {} (nothing in it yet, or another --config?)",
            db.display()
        );
    }
    Ok(db)
}

/// Opens the database at `path`, creating it (readable by its owner only: it holds
/// contact details and password hashes) and its folder (likewise) if needed.
pub fn open(path: &Path) -> anyhow::Result<Connection> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        private::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    // Created private before SQLite opens it: SQLite gives its -wal and -shm files the
    // database's permissions (setting them itself, whatever the umask).
    private::open_options()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| path.display().to_string())?;
    let conn = Connection::open(path).with_context(|| path.display().to_string())?;
    // The relay and a postmaster's command may write at once: wait for each other.
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_database_and_its_companions_are_the_relays_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/sluice.db");
        let conn = super::open(&path).unwrap();
        // A write, so that the write-ahead log and its index exist.
        conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        for name in [
            "state",
            "state/sluice.db",
            "state/sluice.db-wal",
            "state/sluice.db-shm",
        ] {
            let mode = std::fs::metadata(dir.path().join(name)).unwrap().mode();
            assert_eq!(mode & 0o077, 0, "{name}: {:o}", mode & 0o7777);
        }
    }
}
