//! The users of the submission listeners: names and argon2 password hashes, in the
//! embedded store (see [`crate::store`]), managed with `sluice user add|remove|list|passwd`.

use anyhow::{Context, bail};
use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    changed_at INTEGER NOT NULL
);
";

/// Longest password taken: argon2 hashes any length, but a client must not make the relay
/// hash megabytes.
pub const MAX_PASSWORD: usize = 1024;

/// A user as `sluice user list` shows it (never the hash).
pub struct User {
    pub name: String,
    /// Unix seconds.
    pub created_at: u64,
    pub changed_at: u64,
}

/// The users table.
pub struct Users {
    conn: Mutex<Connection>,
}

impl Users {
    /// Opens the users in the store at `path`, creating the table if needed.
    pub fn open(path: &Path) -> anyhow::Result<Users> {
        let conn = crate::store::open(path)?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("{}: creating the users table", path.display()))?;
        Ok(Users {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a user; a name already taken is refused.
    pub fn add(&self, name: &str, password: &str) -> anyhow::Result<()> {
        check_name(name)?;
        let hash = hash(password)?;
        let now = crate::queue::now() as i64;
        let added = self.conn().execute(
            "INSERT INTO users (name, hash, created_at, changed_at) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (name) DO NOTHING",
            params![name, hash, now],
        )?;
        if added == 0 {
            bail!("user {name} exists already (sluice user passwd changes a password)");
        }
        Ok(())
    }

    /// Changes a user's password; false when there is no such user.
    pub fn set_password(&self, name: &str, password: &str) -> anyhow::Result<bool> {
        let hash = hash(password)?;
        let now = crate::queue::now() as i64;
        Ok(self.conn().execute(
            "UPDATE users SET hash = ?2, changed_at = ?3 WHERE name = ?1",
            params![name, hash, now],
        )? > 0)
    }

    /// Removes a user; false when there is no such user.
    pub fn remove(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self
            .conn()
            .execute("DELETE FROM users WHERE name = ?1", [name])?
            > 0)
    }

    /// Every user, by name.
    pub fn list(&self) -> anyhow::Result<Vec<User>> {
        let conn = self.conn();
        let mut query =
            conn.prepare("SELECT name, created_at, changed_at FROM users ORDER BY name")?;
        let rows = query.query_map([], |row| {
            Ok(User {
                name: row.get(0)?,
                created_at: row.get::<_, i64>(1)? as u64,
                changed_at: row.get::<_, i64>(2)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Are these the credentials of a user? Slow on purpose (argon2), and as slow for a
    /// name that does not exist, so a client cannot tell which names do.
    pub fn verify(&self, name: &str, password: &str) -> anyhow::Result<bool> {
        let stored: Option<String> = self
            .conn()
            .query_row("SELECT hash FROM users WHERE name = ?1", [name], |row| {
                row.get(0)
            })
            .optional()?;
        let hash = stored.as_deref().unwrap_or_else(|| unknown_user_hash());
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), hash)
            .is_ok();
        Ok(matches && stored.is_some())
    }
}

/// A hash to check passwords of unknown users against, so they take as long.
fn unknown_user_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash("no such user").unwrap_or_default())
}

fn hash(password: &str) -> anyhow::Result<String> {
    if password.is_empty() {
        bail!("the password is empty");
    }
    if password.len() > MAX_PASSWORD {
        bail!("the password is longer than {MAX_PASSWORD} bytes");
    }
    // Argon2id with the crate's defaults (OWASP's minimum: 19 MiB, 2 passes) and a
    // random salt, in the PHC string format.
    Ok(Argon2::default()
        .hash_password(password.as_bytes())
        .map_err(|e| anyhow::anyhow!("hashing: {e}"))?
        .to_string())
}

/// A user name as SMTP AUTH carries it: printable, no spaces, at most 64 bytes.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@+-".contains(c))
    {
        bail!("user name {name:?}: use 1 to 64 letters, digits and . _ @ + -");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_checked_against_their_hash_only() {
        let dir = tempfile::tempdir().unwrap();
        let users = Users::open(&dir.path().join("sluice.db")).unwrap();
        users.add("printer", "s3cret pass").unwrap();
        assert!(users.add("printer", "other").is_err());
        assert!(users.verify("printer", "s3cret pass").unwrap());
        assert!(!users.verify("printer", "s3cret pas").unwrap());
        assert!(!users.verify("nobody", "s3cret pass").unwrap());
        assert!(users.set_password("printer", "new one").unwrap());
        assert!(!users.verify("printer", "s3cret pass").unwrap());
        assert!(users.verify("printer", "new one").unwrap());
        assert!(!users.set_password("nobody", "x").unwrap());
        assert_eq!(users.list().unwrap()[0].name, "printer");
        assert!(users.remove("printer").unwrap());
        assert!(!users.verify("printer", "new one").unwrap());
        assert!(users.add("two words", "x").is_err());
        assert!(users.add("ok", "").is_err());
    }
}
