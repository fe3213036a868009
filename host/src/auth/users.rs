//! The users of the submission listeners: names and argon2 password hashes, in the
//! embedded store (see [`crate::store`]), managed with `sluice user add|remove|list|passwd`.

use crate::store::{Db, Location, Sql, params};
use anyhow::{Context, bail};
use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use std::sync::{Mutex, OnceLock};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    changed_at INTEGER NOT NULL,
    role TEXT NOT NULL DEFAULT 'sender'
);
";

/// What a user may do. One role per user: a postmaster's password is never good for
/// SMTP AUTH, where guessing is cheapest, and a sending account never opens the portal's
/// review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Authenticates on the submission listeners to send mail.
    Sender,
    /// Signs in to the registration portal to review requests and keep the registry.
    Postmaster,
}

impl Role {
    /// A stored role; anything unknown is the least privileged.
    fn parse(text: &str) -> Role {
        if text == "postmaster" {
            Role::Postmaster
        } else {
            Role::Sender
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Sender => "sender",
            Role::Postmaster => "postmaster",
        }
    }
}

/// Longest password taken: argon2 hashes any length, but a client must not make the relay
/// hash megabytes.
pub const MAX_PASSWORD: usize = 1024;

/// A user as `sluice user list` shows it (never the hash).
pub struct User {
    pub name: String,
    pub role: Role,
    /// Unix seconds.
    pub created_at: u64,
    pub changed_at: u64,
}

/// The users table.
pub struct Users {
    db: Mutex<Db>,
}

impl Users {
    /// Opens the users in the store at `location`, creating the table if needed.
    pub fn open(location: &Location) -> anyhow::Result<Users> {
        let mut db = Db::open(location)?;
        db.create(SCHEMA)
            .with_context(|| format!("{location}: creating the users table"))?;
        // A store made before users had roles: every user sent mail.
        if !db.has_column("users", "role")? {
            db.create("ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'sender'")
                .with_context(|| format!("{location}: adding roles to the users"))?;
        }
        Ok(Users { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a user; a name already taken is refused.
    pub fn add(&self, name: &str, password: &str, role: Role) -> anyhow::Result<()> {
        check_name(name)?;
        let hash = hash(password)?;
        let now = crate::queue::now() as i64;
        let added = self.db().execute(
            "INSERT INTO users (name, hash, created_at, changed_at, role) VALUES (?1, ?2, ?3, ?3, ?4)
             ON CONFLICT (name) DO NOTHING",
            params![name, hash, now, role.as_str()],
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
        Ok(self.db().execute(
            "UPDATE users SET hash = ?2, changed_at = ?3 WHERE name = ?1",
            params![name, hash, now],
        )? > 0)
    }

    /// Removes a user; false when there is no such user.
    pub fn remove(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self
            .db()
            .execute("DELETE FROM users WHERE name = ?1", params![name])?
            > 0)
    }

    /// Every user, by name.
    pub fn list(&self) -> anyhow::Result<Vec<User>> {
        let rows = self.db().query(
            "SELECT name, created_at, changed_at, role FROM users ORDER BY name",
            &[],
        )?;
        rows.iter()
            .map(|row| {
                Ok(User {
                    name: row.text(0)?,
                    role: Role::parse(&row.text(3)?),
                    created_at: row.time(1)?,
                    changed_at: row.time(2)?,
                })
            })
            .collect()
    }

    /// The role of the user `name`, if there is one.
    pub fn role_of(&self, name: &str) -> anyhow::Result<Option<Role>> {
        let row = self
            .db()
            .query_one("SELECT role FROM users WHERE name = ?1", params![name])?;
        Ok(row
            .map(|r| r.text(0))
            .transpose()?
            .as_deref()
            .map(Role::parse))
    }

    /// Are these the credentials of a user who sends mail? See [`Users::verify_as`].
    pub fn verify(&self, name: &str, password: &str) -> anyhow::Result<bool> {
        self.verify_as(name, password, Role::Sender)
    }

    /// Are these the credentials of a user with `role`? Slow on purpose (argon2), and as
    /// slow for a name that does not exist or has another role, so a client cannot tell
    /// which names do.
    pub fn verify_as(&self, name: &str, password: &str, role: Role) -> anyhow::Result<bool> {
        let stored: Option<String> = self
            .db()
            .query_one(
                "SELECT hash FROM users WHERE name = ?1 AND role = ?2",
                params![name, role.as_str()],
            )?
            .map(|row| row.text(0))
            .transpose()?;
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
    use crate::store::testing::on_each_engine;

    on_each_engine!(passwords_are_checked_against_their_hash_only);

    fn passwords_are_checked_against_their_hash_only(location: &Location) {
        let users = Users::open(location).unwrap();
        users.add("printer", "s3cret pass", Role::Sender).unwrap();
        assert!(users.add("printer", "other", Role::Sender).is_err());
        users.add("pm", "review pass", Role::Postmaster).unwrap();
        assert!(
            !users.verify("pm", "review pass").unwrap(),
            "not an AUTH account"
        );
        assert!(
            users
                .verify_as("pm", "review pass", Role::Postmaster)
                .unwrap()
        );
        assert!(
            !users
                .verify_as("printer", "s3cret pass", Role::Postmaster)
                .unwrap()
        );
        assert!(users.verify("printer", "s3cret pass").unwrap());
        assert!(!users.verify("printer", "s3cret pas").unwrap());
        assert!(!users.verify("nobody", "s3cret pass").unwrap());
        assert!(users.set_password("printer", "new one").unwrap());
        assert!(!users.verify("printer", "s3cret pass").unwrap());
        assert!(users.verify("printer", "new one").unwrap());
        assert!(!users.set_password("nobody", "x").unwrap());
        assert_eq!(users.list().unwrap()[1].name, "printer");
        assert!(users.remove("printer").unwrap());
        assert!(!users.verify("printer", "new one").unwrap());
        assert!(users.add("two words", "x", Role::Sender).is_err());
        assert!(users.add("ok", "", Role::Sender).is_err());
    }
}
