//! The registry on disk: tables in the embedded store (see [`crate::store`]), shared by
//! the running relay and the `sluice registry` commands.
//!
//! # Tables
//! ```text
//! registrations  network (canonical CIDR) → admin, contact, department, purpose,
//!                registered_at, last_relayed_at
//! blocks         network → reason, blocked_at
//! outbox         notices to send: a row is written in the same transaction as the change
//!                it tells of, and removed by the relay once the message is in its spool
//! ```
//!
//! Times are Unix seconds (SQLite's integers are signed; these are far from the sign bit).

use super::notice::Notice;
use super::table::{Block, Registration, Table, display, parse_network};
use anyhow::{Context, bail};
use ipnet::IpNet;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::collections::HashSet;
use std::path::Path;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS registrations (
    network TEXT PRIMARY KEY,
    admin TEXT NOT NULL,
    contact TEXT NOT NULL,
    department TEXT NOT NULL,
    purpose TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    last_relayed_at INTEGER
);
CREATE TABLE IF NOT EXISTS blocks (
    network TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    blocked_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL
);
";

/// An open registry database.
pub struct Store {
    conn: Connection,
    /// SQLite's count of changes made by other connections, at the last [`Store::changed`].
    data_version: Option<i64>,
}

impl Store {
    /// Opens the registry in the store at `path`, creating its tables if needed.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        let conn = crate::store::open(path)?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("{}: creating the registry's tables", path.display()))?;
        Ok(Store {
            conn,
            data_version: None,
        })
    }

    /// The registry in the store at `path`, if there is a store there: a command that only
    /// reads must not create an empty one where a wrong `--config` points.
    pub fn open_existing(path: &Path) -> anyhow::Result<Option<Store>> {
        if !path.exists() {
            return Ok(None);
        }
        Store::open(path).map(Some)
    }

    /// Has anyone else changed the database since the last call? (True the first time.)
    pub fn changed(&mut self) -> anyhow::Result<bool> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |row| row.get(0))?;
        Ok(self.data_version.replace(version) != Some(version))
    }

    /// Every registration and block.
    pub fn table(&self) -> anyhow::Result<Table> {
        let mut registrations = Vec::new();
        let mut query = self.conn.prepare(
            "SELECT network, admin, contact, department, purpose, registered_at, last_relayed_at
             FROM registrations",
        )?;
        let mut rows = query.query([])?;
        while let Some(row) = rows.next()? {
            let network: String = row.get(0)?;
            let Some(network) = network_of(&network) else {
                continue;
            };
            registrations.push(Registration {
                network,
                admin: row.get(1)?,
                contact: row.get(2)?,
                department: row.get(3)?,
                purpose: row.get(4)?,
                registered_at: row.get::<_, i64>(5)? as u64,
                last_relayed_at: row.get::<_, Option<i64>>(6)?.map(|t| t as u64),
            });
        }
        let mut blocks = Vec::new();
        let mut query = self
            .conn
            .prepare("SELECT network, reason, blocked_at FROM blocks")?;
        let mut rows = query.query([])?;
        while let Some(row) = rows.next()? {
            let network: String = row.get(0)?;
            let Some(network) = network_of(&network) else {
                continue;
            };
            blocks.push(Block {
                network,
                reason: row.get(1)?,
                blocked_at: row.get::<_, i64>(2)? as u64,
            });
        }
        Ok(Table::new(registrations, blocks))
    }

    /// Registers `registration.network` and queues `notice`, together; an address already
    /// registered is refused (remove it first), so a registration never changes hands
    /// silently.
    pub fn register(&mut self, registration: &Registration, notice: &Notice) -> anyhow::Result<()> {
        // Immediate: the write lock from the start, so the check and the insert see the
        // same database (a deferred transaction would fail, not wait, if the relay wrote
        // in between).
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let network = registration.network.to_string();
        let holder: Option<String> = tx
            .query_row(
                "SELECT admin FROM registrations WHERE network = ?1",
                [&network],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(admin) = holder {
            bail!(
                "{} is already registered (admin {admin}); remove it first to register it again",
                display(&registration.network)
            );
        }
        tx.execute(
            "INSERT INTO registrations
             (network, admin, contact, department, purpose, registered_at, last_relayed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)",
            params![
                network,
                registration.admin,
                registration.contact,
                registration.department,
                registration.purpose,
                registration.registered_at as i64,
            ],
        )?;
        queue_notice(&tx, notice)?;
        tx.commit()?;
        Ok(())
    }

    /// Removes the registration of exactly `network`, returning its department and admin.
    pub fn unregister(&mut self, network: &IpNet) -> anyhow::Result<Option<(String, String)>> {
        Ok(self
            .conn
            .query_row(
                "DELETE FROM registrations WHERE network = ?1 RETURNING department, admin",
                [network.to_string()],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?)
    }

    /// Blocks `network` (replacing the reason of an existing block).
    pub fn block(&mut self, network: &IpNet, reason: &str, now: u64) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT INTO blocks (network, reason, blocked_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (network) DO UPDATE SET reason = ?2, blocked_at = ?3",
            params![network.to_string(), reason, now as i64],
        )?;
        Ok(())
    }

    /// Lifts the block of exactly `network`; false when there was none.
    pub fn unblock(&mut self, network: &IpNet) -> anyhow::Result<bool> {
        Ok(self.conn.execute(
            "DELETE FROM blocks WHERE network = ?1",
            [network.to_string()],
        )? > 0)
    }

    /// Records when registrations last relayed: `(network, Unix seconds)`.
    pub fn record_relayed(&mut self, uses: &[(IpNet, u64)]) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        for (network, at) in uses {
            tx.execute(
                "UPDATE registrations SET last_relayed_at = MAX(COALESCE(last_relayed_at, 0), ?2)
                 WHERE network = ?1",
                params![network.to_string(), *at as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes the registrations unused since `before` (Unix seconds; a registration never
    /// used counts from when it was made), except those in `in_use`, queueing
    /// `notice(registration)` for each, and returns those removed.
    pub fn expire(
        &mut self,
        before: u64,
        in_use: &HashSet<IpNet>,
        notice: impl Fn(&Registration) -> Notice,
    ) -> anyhow::Result<Vec<Registration>> {
        let candidates: Vec<Registration> = self
            .table()?
            .registrations()
            .iter()
            .filter(|r| {
                r.last_relayed_at.unwrap_or(r.registered_at) < before
                    && !in_use.contains(&r.network)
            })
            .cloned()
            .collect();
        if candidates.is_empty() {
            return Ok(candidates);
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut removed = Vec::new();
        for registration in candidates {
            // Only if still unused: `sluice registry` or another round may have changed it.
            let deleted = tx.execute(
                "DELETE FROM registrations
                 WHERE network = ?1 AND COALESCE(last_relayed_at, registered_at) < ?2",
                params![registration.network.to_string(), before as i64],
            )?;
            if deleted > 0 {
                queue_notice(&tx, &notice(&registration))?;
                removed.push(registration);
            }
        }
        tx.commit()?;
        Ok(removed)
    }

    /// The notices waiting to be queued, oldest first, with their row ids.
    pub fn outbox(&self) -> anyhow::Result<Vec<(i64, Notice)>> {
        let mut query = self
            .conn
            .prepare("SELECT id, recipient, subject, body FROM outbox ORDER BY id")?;
        let rows = query.query_map([], |row| {
            Ok((
                row.get(0)?,
                Notice {
                    recipient: row.get(1)?,
                    subject: row.get(2)?,
                    body: row.get(3)?,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets a notice the relay has queued.
    pub fn sent(&mut self, id: i64) -> anyhow::Result<()> {
        self.conn
            .execute("DELETE FROM outbox WHERE id = ?1", [id])?;
        Ok(())
    }
}

fn queue_notice(tx: &rusqlite::Transaction<'_>, notice: &Notice) -> rusqlite::Result<usize> {
    tx.execute(
        "INSERT INTO outbox (recipient, subject, body) VALUES (?1, ?2, ?3)",
        params![notice.recipient, notice.subject, notice.body],
    )
}

/// A row's network; a row edited by hand into something else is skipped (and logged)
/// rather than making the whole registry unreadable.
fn network_of(text: &str) -> Option<IpNet> {
    parse_network(text)
        .map_err(
            |e| tracing::error!(target: "sluice::registry", "registry database: row skipped: {e}"),
        )
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(network: &str, registered_at: u64) -> Registration {
        Registration {
            network: parse_network(network).unwrap(),
            admin: "jdoe".into(),
            contact: "jdoe@example.edu".into(),
            department: "physics".into(),
            purpose: "printer".into(),
            registered_at,
            last_relayed_at: None,
        }
    }

    fn notice(to: &str) -> Notice {
        Notice {
            recipient: to.into(),
            subject: "s".into(),
            body: "b".into(),
        }
    }

    #[test]
    fn a_registration_and_its_notice_are_written_together() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("registry.db")).unwrap();
        store
            .register(&registration("10.1.2.3", 100), &notice("jdoe@example.edu"))
            .unwrap();
        let again = store.register(&registration("10.1.2.3", 200), &notice("x@example.edu"));
        assert!(
            again
                .unwrap_err()
                .to_string()
                .contains("already registered")
        );
        assert_eq!(
            store.outbox().unwrap().len(),
            1,
            "no notice for a refused change"
        );
        let (id, _) = store.outbox().unwrap()[0].clone();
        store.sent(id).unwrap();
        assert!(store.outbox().unwrap().is_empty());

        // Another connection (a postmaster's command) sees it, and the relay's sees the change.
        let mut other = Store::open(&dir.path().join("registry.db")).unwrap();
        assert!(other.changed().unwrap());
        assert!(!other.changed().unwrap());
        store
            .block(&parse_network("10.9.0.0/16").unwrap(), "spam", 5)
            .unwrap();
        assert!(other.changed().unwrap());
        let table = other.table().unwrap();
        assert_eq!(table.registrations().len(), 1);
        assert_eq!(table.blocks()[0].reason, "spam");
    }

    #[test]
    fn expiry_spares_what_relayed_since() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("registry.db")).unwrap();
        for (network, at) in [("10.0.0.1", 100), ("10.0.0.2", 100), ("10.0.0.3", 900)] {
            store
                .register(&registration(network, at), &notice("jdoe@example.edu"))
                .unwrap();
        }
        store
            .record_relayed(&[(parse_network("10.0.0.2").unwrap(), 800)])
            .unwrap();
        let expired = store
            .expire(500, &HashSet::new(), |r| notice(&r.contact))
            .unwrap();
        assert_eq!(
            expired
                .iter()
                .map(|r| display(&r.network))
                .collect::<Vec<_>>(),
            ["10.0.0.1"]
        );
        assert_eq!(store.outbox().unwrap().len(), 4);
        let left = store.table().unwrap();
        assert_eq!(left.registrations().len(), 2);
        let used = left.registration("10.0.0.2".parse().unwrap()).unwrap();
        assert_eq!(used.last_relayed_at, Some(800));
        // A use the relay has seen but not written yet also keeps a registration.
        let in_use = HashSet::from([parse_network("10.0.0.3").unwrap()]);
        assert!(
            store
                .expire(1000, &in_use, |r| notice(&r.contact))
                .unwrap()
                .len()
                == 1
        );
        assert_eq!(store.table().unwrap().registrations().len(), 1);
    }
}
