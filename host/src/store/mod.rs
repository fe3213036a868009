//! The store: what the postmaster's commands, the portal and the running relay all change
//! (the relay registry and its requests, the users, the portal's sign-ins and tokens).
//!
//! Two engines behind one interface, [`Sql`]:
//! - [`sqlite`], the embedded default (`[store] db`): small tables that two processes
//!   write, which its locking and transactions handle, and which a postmaster can read or
//!   back up with the `sqlite3` tool.
//! - [`postgres`], for a relay of several nodes (`[store] url`): one database they all
//!   share, replicated as PostgreSQL is, which tells every node of a change at once
//!   (`LISTEN`/`NOTIFY`, see [`postgres::Listener`]).
//!
//! Each part creates its own tables (see `registry::store`, `auth::users`,
//! `web::accounts`), in SQL that both engines read: placeholders `?1`, `?2`…, types
//! `INTEGER` and `TEXT`, `INSERT … ON CONFLICT`, `RETURNING`. What differs (a schema's
//! identity columns, how a writer takes the lock, how a change is noticed) is each
//! engine's own.

pub mod postgres;
pub mod sqlite;

use crate::config::Config;
use std::path::PathBuf;

/// Where the store is, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    /// A `postgres://` URL (or key=value connection string).
    Postgres(String),
}

impl Location {
    /// Is there a store here? A PostgreSQL database always is (its tables are made at
    /// start); an SQLite one once its file is made.
    pub fn exists(&self) -> bool {
        match self {
            Location::Sqlite(path) => path.exists(),
            Location::Postgres(_) => true,
        }
    }

    pub fn of(config: &Config) -> Location {
        match &config.store.url {
            Some(url) => Location::Postgres(url.clone()),
            None => Location::Sqlite(config.store_db()),
        }
    }
}

impl std::fmt::Display for Location {
    /// Where, for messages: a path, or the URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => f.write_str(&postgres::without_password(url)),
        }
    }
}

/// The configured store, if there is one: a command that only reads (or removes) must not
/// create an empty SQLite database where a wrong `--config` points. A PostgreSQL store is
/// always there (its tables are made at start).
pub fn existing(config: &Config) -> anyhow::Result<Location> {
    let location = Location::of(config);
    if !location.exists() {
        anyhow::bail!("no store at {location} (nothing in it yet, or another --config?)");
    }
    Ok(location)
}

/// A value passed to or read from a statement: the store's columns hold only these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int(n)
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Value {
        Value::Text(text.to_owned())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Value {
        Value::Text(text)
    }
}

impl From<&String> for Value {
    fn from(text: &String) -> Value {
        Value::Text(text.clone())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Value {
        value.map_or(Value::Null, Into::into)
    }
}

/// A statement's parameters: `params![network.to_string(), now as i64]`.
macro_rules! params {
    ($($value:expr),* $(,)?) => {
        &[$($crate::store::Value::from($value)),*][..]
    };
}
pub(crate) use params;

/// One row of a query's result.
#[derive(Debug)]
pub struct Row(pub(crate) Vec<Value>);

impl Row {
    fn get(&self, column: usize) -> anyhow::Result<&Value> {
        self.0
            .get(column)
            .ok_or_else(|| anyhow::anyhow!("no column {column} in the row"))
    }

    pub fn int(&self, column: usize) -> anyhow::Result<i64> {
        self.opt_int(column)?
            .ok_or_else(|| anyhow::anyhow!("column {column} is NULL"))
    }

    pub fn opt_int(&self, column: usize) -> anyhow::Result<Option<i64>> {
        match self.get(column)? {
            Value::Int(n) => Ok(Some(*n)),
            Value::Null => Ok(None),
            Value::Text(_) => anyhow::bail!("column {column} is text, not a number"),
        }
    }

    pub fn text(&self, column: usize) -> anyhow::Result<String> {
        match self.get(column)? {
            Value::Text(text) => Ok(text.clone()),
            Value::Int(_) => anyhow::bail!("column {column} is a number, not text"),
            Value::Null => anyhow::bail!("column {column} is NULL"),
        }
    }

    /// Unix seconds, as the store keeps times.
    pub fn time(&self, column: usize) -> anyhow::Result<u64> {
        Ok(self.int(column)?.max(0) as u64)
    }

    pub fn opt_time(&self, column: usize) -> anyhow::Result<Option<u64>> {
        Ok(self.opt_int(column)?.map(|t| t.max(0) as u64))
    }
}

/// Statements, as both engines run them (a connection, or a transaction). The SQL is
/// written once, in what both read (see the module's documentation).
pub trait Sql {
    /// Runs a statement, returning the number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<u64>;
    /// Runs a query, returning every row.
    fn query(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<Vec<Row>>;

    /// The first row of a query, if any.
    fn query_one(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

/// An open store: one connection to either engine.
pub struct Db {
    engine: Engine,
}

enum Engine {
    Sqlite(sqlite::Connection),
    Postgres(Box<postgres::Connection>),
}

impl Db {
    /// Connects to the store at `location`, creating an SQLite database (and its folder)
    /// if needed.
    pub fn open(location: &Location) -> anyhow::Result<Db> {
        let engine = match location {
            Location::Sqlite(path) => Engine::Sqlite(sqlite::Connection::open(path)?),
            Location::Postgres(url) => Engine::Postgres(Box::new(postgres::Connection::open(url)?)),
        };
        Ok(Db { engine })
    }

    /// Creates the tables of `schema` (written for SQLite: `INTEGER`, `INTEGER PRIMARY
    /// KEY AUTOINCREMENT`) where they do not exist yet.
    pub fn create(&mut self, schema: &str) -> anyhow::Result<()> {
        match &mut self.engine {
            Engine::Sqlite(conn) => conn.create(schema),
            Engine::Postgres(conn) => conn.create(schema),
        }
    }

    /// Does `table` have `column`? (For a migration adding one.)
    pub fn has_column(&mut self, table: &str, column: &str) -> anyhow::Result<bool> {
        match &mut self.engine {
            Engine::Sqlite(conn) => conn.has_column(table, column),
            Engine::Postgres(conn) => conn.has_column(table, column),
        }
    }

    /// Runs `change` in a transaction that holds the store's write lock from its start,
    /// so what it reads is what it changes (another writer waits), and commits it when it
    /// returns `Ok`.
    pub fn write<T: Send>(
        &mut self,
        change: impl FnOnce(&mut dyn Sql) -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        match &mut self.engine {
            Engine::Sqlite(conn) => conn.write(change),
            Engine::Postgres(conn) => conn.write(change),
        }
    }

    /// Makes the store announce every change to the registry's tables to every node (see
    /// [`postgres::Listener`]); an SQLite store has one node, told by the command that
    /// changed it.
    pub fn watch_registry(&mut self) -> anyhow::Result<()> {
        match &mut self.engine {
            Engine::Sqlite(_) => Ok(()),
            Engine::Postgres(conn) => conn.watch_registry(),
        }
    }

    /// Has anyone changed the registry (its registrations or blocks) since the last call?
    /// True the first time.
    pub fn registry_changed(&mut self) -> anyhow::Result<bool> {
        match &mut self.engine {
            Engine::Sqlite(conn) => conn.changed(),
            Engine::Postgres(conn) => conn.registry_changed(),
        }
    }
}

impl Sql for Db {
    fn execute(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<u64> {
        match &mut self.engine {
            Engine::Sqlite(conn) => conn.execute(sql, params),
            Engine::Postgres(conn) => conn.execute(sql, params),
        }
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<Vec<Row>> {
        match &mut self.engine {
            Engine::Sqlite(conn) => conn.query(sql, params),
            Engine::Postgres(conn) => conn.query(sql, params),
        }
    }
}

/// The engines a store's tests run against: SQLite always, and PostgreSQL when the test
/// machine has its server (see [`postgres::testing`]).
#[cfg(test)]
pub mod testing {
    use super::Location;
    use super::postgres::testing::Server;

    /// A private, empty store, kept until the value is dropped.
    pub struct Scratch {
        pub location: Location,
        _dir: Option<tempfile::TempDir>,
        _server: Option<Server>,
    }

    /// An SQLite database in a temporary folder.
    pub fn sqlite() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        Scratch {
            location: Location::Sqlite(dir.path().join("sluice.db")),
            _dir: Some(dir),
            _server: None,
        }
    }

    /// A PostgreSQL server of its own, when PostgreSQL is installed.
    pub fn postgres() -> Option<Scratch> {
        let server = Server::start_if_installed()?;
        Some(Scratch {
            location: Location::Postgres(server.url()),
            _dir: None,
            _server: Some(server),
        })
    }

    /// Runs each test (a `fn(&Location)`) on each engine: `name::sqlite`, `name::postgres`.
    macro_rules! on_each_engine {
        ($($name:ident),* $(,)?) => {$(
            mod $name {
                #[test]
                fn sqlite() {
                    super::$name(&$crate::store::testing::sqlite().location);
                }
                #[test]
                fn postgres() {
                    if let Some(store) = $crate::store::testing::postgres() {
                        super::$name(&store.location);
                    }
                }
            }
        )*};
    }
    pub(crate) use on_each_engine;
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_database_and_its_companions_are_the_relays_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/sluice.db");
        let mut db = super::Db::open(&super::Location::Sqlite(path)).unwrap();
        // A write, so that the write-ahead log and its index exist.
        db.create("CREATE TABLE t (x INTEGER);").unwrap();
        db.write(|tx| tx.execute("INSERT INTO t VALUES (1)", &[]))
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
