//! The embedded engine: one SQLite database file, shared by the relay and the postmaster's
//! commands through SQLite's own locking.

use super::{Row, Sql, Value};
use crate::private;
use anyhow::Context;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{ToSql, TransactionBehavior};
use std::path::Path;
use std::time::Duration;

/// An open SQLite database.
pub struct Connection {
    conn: rusqlite::Connection,
    /// SQLite's count of changes made by other connections, at the last [`Connection::changed`].
    data_version: Option<i64>,
}

impl Connection {
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
        let conn = rusqlite::Connection::open(path).with_context(|| path.display().to_string())?;
        // The relay and a postmaster's command may write at once: wait for each other.
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        Ok(Connection {
            conn,
            data_version: None,
        })
    }

    pub fn create(&mut self, schema: &str) -> anyhow::Result<()> {
        Ok(self.conn.execute_batch(schema)?)
    }

    pub fn has_column(&mut self, table: &str, column: &str) -> anyhow::Result<bool> {
        Ok(self
            .conn
            .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
            .exists([table, column])?)
    }

    /// An immediate transaction: the write lock from the start, so the checks and the
    /// changes see the same database (a deferred one would fail, not wait, if another
    /// connection wrote in between).
    pub fn write<T>(
        &mut self,
        change: impl FnOnce(&mut dyn Sql) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let result = change(&mut tx)?;
        tx.commit()?;
        Ok(result)
    }

    /// Has another connection changed the database since the last call? (True the first
    /// time.) What this connection wrote itself does not count.
    pub fn changed(&mut self) -> anyhow::Result<bool> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |row| row.get(0))?;
        Ok(self.data_version.replace(version) != Some(version))
    }

    pub fn execute(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<u64> {
        execute(&self.conn, sql, params)
    }

    pub fn query(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<Vec<Row>> {
        query(&self.conn, sql, params)
    }
}

impl Sql for rusqlite::Transaction<'_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<u64> {
        execute(self, sql, params)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<Vec<Row>> {
        query(self, sql, params)
    }
}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(n) => ToSqlOutput::Borrowed(ValueRef::Integer(*n)),
            Value::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
        })
    }
}

fn execute(conn: &rusqlite::Connection, sql: &str, params: &[Value]) -> anyhow::Result<u64> {
    let mut statement = conn.prepare(sql)?;
    Ok(statement.execute(rusqlite::params_from_iter(params))? as u64)
}

fn query(conn: &rusqlite::Connection, sql: &str, params: &[Value]) -> anyhow::Result<Vec<Row>> {
    let mut statement = conn.prepare(sql)?;
    let columns = statement.column_count();
    let mut rows = statement.query(rusqlite::params_from_iter(params))?;
    let mut read = Vec::new();
    while let Some(row) = rows.next()? {
        let values = (0..columns)
            .map(|i| {
                Ok(match row.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(n) => Value::Int(n),
                    ValueRef::Text(text) => Value::Text(String::from_utf8_lossy(text).into_owned()),
                    ValueRef::Real(x) => Value::Int(x as i64),
                    ValueRef::Blob(_) => anyhow::bail!("column {i} is a blob"),
                })
            })
            .collect::<anyhow::Result<Vec<Value>>>()?;
        read.push(Row(values));
    }
    Ok(read)
}
