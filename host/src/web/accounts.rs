//! Who is signed in to the portal: sign-in links, sessions and API tokens, in the embedded
//! store beside the registry.
//!
//! ```text
//! web_links     sha256(token) → address, expires_at, used   (one-time sign-in links)
//! web_sessions  sha256(token) → identity, role, expires_at   (the portal's cookie)
//! web_tokens    name → sha256(token), role, created_at, last_used_at   (the API's bearer)
//! ```
//!
//! Only hashes of the secrets are kept: a copy of the database signs nobody in. The
//! secrets are 256 random bits, so one SHA-256 is enough (no password hash needed).

use crate::registry::notice::Notice;
use crate::store::{Db, Location, Row, Sql, params};
use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::sync::Mutex;
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS web_links (
    hash TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS web_sessions (
    hash TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    role TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS web_tokens (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER
);
";

/// How long a sign-in link may be used.
pub const LINK_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// What a signed-in person may do in the portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Requests registrations and keeps their own ("List Relays").
    Department,
    /// Reviews requests and keeps the whole registry.
    Postmaster,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Department => "department",
            Role::Postmaster => "postmaster",
        }
    }

    /// A stored role; anything unknown is the least privileged.
    fn parse(text: &str) -> Role {
        if text == "postmaster" {
            Role::Postmaster
        } else {
            Role::Department
        }
    }
}

/// An API token as `sluice token list` shows it.
pub struct Token {
    pub name: String,
    pub role: Role,
    pub created_at: u64,
    pub last_used_at: Option<u64>,
}

/// The portal's tables.
pub struct Accounts {
    db: Mutex<Db>,
}

/// A new random secret: 256 bits, URL-safe.
pub fn secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn hash(secret: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn now() -> i64 {
    crate::queue::now() as i64
}

impl Accounts {
    /// Opens the portal's tables in the store at `location`, creating them if needed.
    pub fn open(location: &Location) -> anyhow::Result<Accounts> {
        let mut db = Db::open(location)?;
        db.create(SCHEMA)
            .with_context(|| format!("{location}: creating the portal's tables"))?;
        Ok(Accounts { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new sign-in link for `address`: `mail(token)` is the message that carries it,
    /// written to the registry's outbox in the same transaction.
    pub fn new_link(&self, address: &str, mail: impl FnOnce(&str) -> Notice) -> anyhow::Result<()> {
        let token = secret()?;
        let notice = mail(&token);
        self.db().write(|tx| {
            tx.execute(
                "DELETE FROM web_links WHERE expires_at < ?1",
                params![now()],
            )?;
            tx.execute(
                "INSERT INTO web_links (hash, address, expires_at) VALUES (?1, ?2, ?3)",
                params![
                    hash(&token),
                    address,
                    now() + LINK_LIFETIME.as_secs() as i64
                ],
            )?;
            crate::registry::store::queue_notice(tx, &notice)?;
            Ok(())
        })
    }

    /// Uses up a sign-in link: the address it was sent to, if it is unused and in time.
    pub fn use_link(&self, token: &str) -> anyhow::Result<Option<String>> {
        self.db()
            .query_one(
                "UPDATE web_links SET used = 1
                 WHERE hash = ?1 AND used = 0 AND expires_at >= ?2 RETURNING address",
                params![hash(token), now()],
            )?
            .map(|row| row.text(0))
            .transpose()
    }

    /// Opens a session for `identity`: the cookie's secret.
    pub fn new_session(
        &self,
        identity: &str,
        role: Role,
        lifetime: Duration,
    ) -> anyhow::Result<String> {
        let token = secret()?;
        let mut db = self.db();
        db.execute(
            "DELETE FROM web_sessions WHERE expires_at < ?1",
            params![now()],
        )?;
        db.execute(
            "INSERT INTO web_sessions (hash, identity, role, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![
                hash(&token),
                identity,
                role.as_str(),
                now() + lifetime.as_secs() as i64
            ],
        )?;
        Ok(token)
    }

    /// Who a session cookie belongs to, while it lasts.
    pub fn session(&self, token: &str) -> anyhow::Result<Option<(String, Role)>> {
        self.db()
            .query_one(
                "SELECT identity, role FROM web_sessions WHERE hash = ?1 AND expires_at >= ?2",
                params![hash(token), now()],
            )?
            .as_ref()
            .map(named_role)
            .transpose()
    }

    /// Signs a session out.
    pub fn end_session(&self, token: &str) -> anyhow::Result<()> {
        self.db().execute(
            "DELETE FROM web_sessions WHERE hash = ?1",
            params![hash(token)],
        )?;
        Ok(())
    }

    /// A new API token named `name`: its secret, shown once.
    pub fn add_token(&self, name: &str, role: Role) -> anyhow::Result<String> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._@+-".contains(c))
        {
            bail!("token name {name:?}: use 1 to 64 letters, digits and . _ @ + -");
        }
        let token = secret()?;
        let added = self.db().execute(
            "INSERT INTO web_tokens (name, hash, role, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO NOTHING",
            params![name, hash(&token), role.as_str(), now()],
        )?;
        if added == 0 {
            bail!("a token named {name} exists already (remove it first)");
        }
        Ok(token)
    }

    /// Removes a token; false when there was none.
    pub fn remove_token(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self
            .db()
            .execute("DELETE FROM web_tokens WHERE name = ?1", params![name])?
            > 0)
    }

    /// Every token (never a secret).
    pub fn tokens(&self) -> anyhow::Result<Vec<Token>> {
        let rows = self.db().query(
            "SELECT name, role, created_at, last_used_at FROM web_tokens ORDER BY name",
            &[],
        )?;
        rows.iter()
            .map(|row| {
                Ok(Token {
                    name: row.text(0)?,
                    role: Role::parse(&row.text(1)?),
                    created_at: row.time(2)?,
                    last_used_at: row.opt_time(3)?,
                })
            })
            .collect()
    }

    /// The token a bearer secret is, noting its use.
    pub fn token(&self, secret: &str) -> anyhow::Result<Option<(String, Role)>> {
        self.db()
            .query_one(
                "UPDATE web_tokens SET last_used_at = ?2 WHERE hash = ?1 RETURNING name, role",
                params![hash(secret), now()],
            )?
            .as_ref()
            .map(named_role)
            .transpose()
    }
}

/// A row of a name and a role.
fn named_role(row: &Row) -> anyhow::Result<(String, Role)> {
    Ok((row.text(0)?, Role::parse(&row.text(1)?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::on_each_engine;

    on_each_engine!(
        a_sign_in_link_works_once,
        sessions_end_and_expire_and_tokens_name_their_role
    );

    fn accounts(location: &Location) -> Accounts {
        crate::registry::store::Store::open(location).unwrap();
        Accounts::open(location).unwrap()
    }

    fn a_sign_in_link_works_once(location: &Location) {
        let accounts = accounts(location);
        let mut sent = String::new();
        accounts
            .new_link("jdoe@example.edu", |token| {
                sent = token.to_string();
                Notice {
                    recipient: "jdoe@example.edu".into(),
                    subject: "Sign in".into(),
                    body: format!("/signin/link?token={token}\n"),
                }
            })
            .unwrap();
        assert_eq!(sent.len(), 43, "256 bits in base64");
        assert_eq!(accounts.use_link("not the token").unwrap(), None);
        assert_eq!(
            accounts.use_link(&sent).unwrap().as_deref(),
            Some("jdoe@example.edu")
        );
        assert_eq!(accounts.use_link(&sent).unwrap(), None, "used up");
        let stored = accounts
            .db()
            .query("SELECT hash FROM web_links", &[])
            .unwrap()[0]
            .text(0)
            .unwrap();
        assert_ne!(stored, sent, "only the hash is kept");
    }

    fn sessions_end_and_expire_and_tokens_name_their_role(location: &Location) {
        let accounts = accounts(location);
        let cookie = accounts
            .new_session("pm", Role::Postmaster, Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            accounts.session(&cookie).unwrap(),
            Some(("pm".into(), Role::Postmaster))
        );
        accounts.end_session(&cookie).unwrap();
        assert_eq!(accounts.session(&cookie).unwrap(), None);
        let old = accounts
            .new_session("jdoe", Role::Department, Duration::ZERO)
            .unwrap();
        accounts
            .db()
            .execute("UPDATE web_sessions SET expires_at = expires_at - 1", &[])
            .unwrap();
        assert_eq!(accounts.session(&old).unwrap(), None, "expired");

        let secret = accounts.add_token("ipam", Role::Department).unwrap();
        assert!(accounts.add_token("ipam", Role::Postmaster).is_err());
        assert!(accounts.add_token("two words", Role::Postmaster).is_err());
        assert_eq!(
            accounts.token(&secret).unwrap(),
            Some(("ipam".into(), Role::Department))
        );
        assert!(accounts.tokens().unwrap()[0].last_used_at.is_some());
        assert!(accounts.remove_token("ipam").unwrap());
        assert_eq!(accounts.token(&secret).unwrap(), None);
    }
}
