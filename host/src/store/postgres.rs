//! The shared engine: a PostgreSQL database the nodes of a relay all use (`[store] url`).
//!
//! Through the synchronous client (`postgres`), as the store is synchronous on SQLite too:
//! its callers already run it off the async workers (`spawn_blocking`), and a call made on
//! a worker anyway is moved to a thread of its own (see [`off_the_runtime`]), since the
//! client drives its connection with a runtime of its own.
//!
//! A connection lost (the server restarted, a failover) is made again at the next
//! statement; the statement that found it lost fails, and its caller tries again as it
//! would after any error of the store.

use super::{Row, Sql, Value};
use anyhow::Context;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{IsNull, ToSql, Type, private::BytesMut, to_sql_checked};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The channel every change to the registry is announced on, by triggers in the database
/// (so a change made with `psql` is announced too).
pub const REGISTRY_CHANNEL: &str = "sluice_registry";

/// How long to wait for the server to answer a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to the store's database.
pub struct Connection {
    config: postgres::Config,
    client: Option<postgres::Client>,
    /// The registry's version (see [`REGISTRY_WATCH`]) at the last [`Connection::registry_changed`].
    registry_version: Option<i64>,
}

impl Connection {
    /// Connects to the database at `url`.
    pub fn open(url: &str) -> anyhow::Result<Connection> {
        let mut conn = Connection {
            config: config(url)?,
            client: None,
            registry_version: None,
        };
        conn.client()?;
        Ok(conn)
    }

    /// The client, connected again if the connection was lost. The client learns of a loss
    /// only by using the connection, so it is asked first (one round trip): the statement
    /// that follows must not be the one to find out, half done.
    fn client(&mut self) -> anyhow::Result<&mut postgres::Client> {
        if let Some(client) = &mut self.client
            && off_the_runtime(|| client.is_valid(CONNECT_TIMEOUT)).is_err()
        {
            self.client = None;
        }
        if self.client.is_none() {
            self.client = None;
            let config = &self.config;
            let client = off_the_runtime(|| config.connect(postgres::NoTls))
                .with_context(|| format!("connecting to {}", describe(config)))?;
            self.client = Some(client);
        }
        // Set just above.
        self.client
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("not connected"))
    }

    /// Creates the tables of `schema` (written for SQLite, see [`schema`]), one node at a
    /// time: two nodes starting together must not both create a table.
    pub fn create(&mut self, schema: &str) -> anyhow::Result<()> {
        let schema = translate_schema(schema);
        self.write(|tx| {
            for statement in schema.split(';').filter(|s| !s.trim().is_empty()) {
                tx.execute(statement, &[])?;
            }
            Ok(())
        })
    }

    /// Makes the database announce every change to the registry (see [`REGISTRY_WATCH`]).
    pub fn watch_registry(&mut self) -> anyhow::Result<()> {
        let client = self.client()?;
        off_the_runtime(|| -> anyhow::Result<()> {
            let mut tx = client.transaction()?;
            tx.batch_execute(REGISTRY_WATCH)?;
            Ok(tx.commit()?)
        })
    }

    pub fn has_column(&mut self, table: &str, column: &str) -> anyhow::Result<bool> {
        Ok(!self
            .query(
                "SELECT 1 FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = ?1 AND column_name = ?2",
                super::params![table, column],
            )?
            .is_empty())
    }

    /// A transaction holding the store's one write lock (an advisory lock, as SQLite's
    /// immediate transaction holds its database's), so writers from every node take turns
    /// and what one checks is still so when it writes.
    pub fn write<T: Send>(
        &mut self,
        change: impl FnOnce(&mut dyn Sql) -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        let client = self.client()?;
        off_the_runtime(|| {
            let mut tx = client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])?;
            let result = change(&mut tx)?;
            tx.commit()?;
            Ok(result)
        })
    }

    /// Has the registry changed since the last call (here or at another node)? True the
    /// first time.
    pub fn registry_changed(&mut self) -> anyhow::Result<bool> {
        let row = self.query_one(
            "SELECT version FROM sluice_versions WHERE name = 'registry'",
            &[],
        )?;
        let version = row.map(|r| r.int(0)).transpose()?.unwrap_or(0);
        Ok(self.registry_version.replace(version) != Some(version))
    }
}

/// The key of the advisory lock every write takes ("sluice" in ASCII).
const WRITE_LOCK: i64 = 0x736c_7569_6365;

/// A version number of the registry, and a notice on [`REGISTRY_CHANNEL`], for every
/// statement that changes its registrations or blocks (a trigger per statement: a round
/// that records many uses announces each once, and `NOTIFY` folds those of one
/// transaction into one).
const REGISTRY_WATCH: &str = "
SELECT pg_advisory_xact_lock(125779421061477);
CREATE TABLE IF NOT EXISTS sluice_versions (name TEXT PRIMARY KEY, version BIGINT NOT NULL);
INSERT INTO sluice_versions (name, version) VALUES ('registry', 0) ON CONFLICT DO NOTHING;
CREATE OR REPLACE FUNCTION sluice_registry_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sluice_versions SET version = version + 1 WHERE name = 'registry';
    PERFORM pg_notify('sluice_registry', '');
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER registrations_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON registrations
    FOR EACH STATEMENT EXECUTE FUNCTION sluice_registry_changed();
CREATE OR REPLACE TRIGGER blocks_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON blocks
    FOR EACH STATEMENT EXECUTE FUNCTION sluice_registry_changed();
";

impl Connection {
    pub fn execute(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<u64> {
        let client = self.client()?;
        off_the_runtime(|| execute(client, sql, params))
    }

    pub fn query(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<Vec<Row>> {
        let client = self.client()?;
        off_the_runtime(|| query(client, sql, params))
    }

    fn query_one(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

impl Sql for postgres::Transaction<'_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<u64> {
        execute(self, sql, params)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<Vec<Row>> {
        query(self, sql, params)
    }
}

fn execute(
    client: &mut impl postgres::GenericClient,
    sql: &str,
    params: &[Value],
) -> anyhow::Result<u64> {
    let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
    Ok(client.execute(translate(sql).as_str(), &params)?)
}

fn query(
    client: &mut impl postgres::GenericClient,
    sql: &str,
    params: &[Value],
) -> anyhow::Result<Vec<Row>> {
    let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
    let rows = client.query(translate(sql).as_str(), &params)?;
    rows.iter()
        .map(|row| {
            let values = row
                .columns()
                .iter()
                .enumerate()
                .map(|(i, column)| {
                    Ok(match *column.type_() {
                        Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Value::Int),
                        Type::INT4 => row
                            .try_get::<_, Option<i32>>(i)?
                            .map(|n| Value::Int(n.into())),
                        Type::INT2 => row
                            .try_get::<_, Option<i16>>(i)?
                            .map(|n| Value::Int(n.into())),
                        Type::BOOL => row
                            .try_get::<_, Option<bool>>(i)?
                            .map(|b| Value::Int(b.into())),
                        _ => row.try_get::<_, Option<String>>(i)?.map(Value::Text),
                    }
                    .unwrap_or(Value::Null))
                })
                .collect::<anyhow::Result<Vec<Value>>>()?;
            Ok(Row(values))
        })
        .collect()
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(n) if *ty == Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
            Value::Int(n) => n.to_sql(ty, out),
            Value::Text(text) => text.as_str().to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as ToSql>::accepts(ty) || <i32 as ToSql>::accepts(ty) || <&str as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

/// The store's SQL (`?1`, `?2`…) as PostgreSQL writes it (`$1`, `$2`…). The store's
/// statements have no `?` in a string.
fn translate(sql: &str) -> String {
    sql.replace('?', "$")
}

/// A schema written for SQLite as PostgreSQL writes it: 64-bit integers throughout (SQLite's
/// are), and identity columns for its row ids.
fn translate_schema(schema: &str) -> String {
    schema
        .replace(
            "INTEGER PRIMARY KEY AUTOINCREMENT",
            "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        )
        .replace("INTEGER", "BIGINT")
}

fn config(url: &str) -> anyhow::Result<postgres::Config> {
    let mut config: postgres::Config = url
        .parse()
        .with_context(|| format!("[store] url {}", without_password(url)))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.application_name("sluice");
    Ok(config)
}

/// The URL without its password, for messages and `sluice status`.
pub fn without_password(url: &str) -> String {
    match url.parse::<postgres::Config>() {
        Ok(config) => describe(&config),
        Err(_) => "(a [store] url that does not parse)".into(),
    }
}

/// `postgres://USER@HOST:PORT/DB`, without a password.
fn describe(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(host)) => host.clone(),
        Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

/// Runs `work` where the synchronous client may block: on this thread, or on a thread of
/// its own when this one runs async tasks (the client's own runtime cannot start inside
/// another's).
fn off_the_runtime<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return work();
    }
    std::thread::scope(|scope| match scope.spawn(work).join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Whether the store can be reached, as `sluice status` and the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Up,
    Unavailable { since: SystemTime, error: String },
}

/// Listens for the registry's changes on a thread of its own, calling `changed` for each
/// (and once after every connection, for what changed while it was not listening), and
/// connecting again every second while the database cannot be reached.
pub struct Listener {
    health: Arc<Mutex<Health>>,
}

impl Listener {
    pub fn start(url: &str, changed: impl Fn() + Send + 'static) -> anyhow::Result<Listener> {
        let config = config(url)?;
        let health = Arc::new(Mutex::new(Health::Up));
        let shared = health.clone();
        std::thread::Builder::new()
            .name("store-listener".into())
            .spawn(move || listen(&config, &shared, &changed))?;
        Ok(Listener { health })
    }

    pub fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn listen(config: &postgres::Config, health: &Mutex<Health>, changed: &dyn Fn()) {
    let set = |now: Health| {
        let mut health = health.lock().unwrap_or_else(|e| e.into_inner());
        match (&*health, &now) {
            (Health::Up, Health::Unavailable { error, .. }) => {
                crate::metrics::metrics().store_connections_lost.inc();
                tracing::error!(target: "sluice::store", error = %error, "store: {} cannot be reached; the relay decides by the registry it has, and tries again every second", describe(config));
            }
            (Health::Unavailable { .. }, Health::Up) => {
                tracing::warn!(target: "sluice::store", "store: {} reached again", describe(config));
            }
            _ => return,
        }
        crate::metrics::metrics()
            .store_up
            .set(i64::from(now == Health::Up));
        *health = now;
    };
    crate::metrics::metrics().store_up.set(1);
    loop {
        let error = match session(config, changed, &|| set(Health::Up)) {
            Ok(()) => "the server closed the connection".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        set(Health::Unavailable {
            since: SystemTime::now(),
            error,
        });
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// One connection's listening, until it is lost.
fn session(
    config: &postgres::Config,
    changed: &dyn Fn(),
    connected: &dyn Fn(),
) -> anyhow::Result<()> {
    let mut client = config.connect(postgres::NoTls)?;
    client.batch_execute(&format!("LISTEN {REGISTRY_CHANNEL}"))?;
    connected();
    changed();
    loop {
        let notice = client
            .notifications()
            .timeout_iter(Duration::from_secs(5))
            .next()?;
        if notice.is_some() {
            // What else has arrived meanwhile is read in the same catching up.
            while client.notifications().iter().next()?.is_some() {}
            changed();
        } else {
            // A quiet connection is asked whether it still lives.
            client.simple_query("SELECT 1")?;
        }
    }
}

/// A private PostgreSQL server for tests: `initdb` and `pg_ctl` on a free loopback port,
/// under a temporary folder, stopped and removed when dropped. Used by the store's tests
/// and the end-to-end tests (which is why it is not `cfg(test)`).
#[doc(hidden)]
pub mod testing {
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    pub struct Server {
        pub port: u16,
        dir: PathBuf,
        /// Whom the server runs as, when the tests run as root (PostgreSQL refuses root).
        user: Option<(u32, u32)>,
    }

    impl Server {
        /// Starts one, if PostgreSQL is installed; `SLUICE_TEST_POSTGRES=require` (as in
        /// CI) makes its absence a failure rather than a skip.
        pub fn start_if_installed() -> Option<Server> {
            if bin("initdb").is_none() {
                assert!(
                    std::env::var("SLUICE_TEST_POSTGRES").as_deref() != Ok("require"),
                    "PostgreSQL is not installed (apt-get install postgresql)"
                );
                eprintln!("PostgreSQL is not installed: testing SQLite only");
                return None;
            }
            Some(Server::start())
        }

        /// Starts one (PostgreSQL must be installed), and waits until it answers.
        pub fn start() -> Server {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            let dir = std::env::temp_dir().join(format!("sluice-pg-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("a folder for PostgreSQL");
            // Run as root? The folder just made is owned by whoever runs.
            let root = std::fs::metadata(&dir)
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
                .unwrap_or(false);
            let user = root.then(|| {
                let id = |flag: &str| -> u32 {
                    let out = Command::new("id")
                        .args([flag, "postgres"])
                        .output()
                        .expect("id");
                    String::from_utf8_lossy(&out.stdout)
                        .trim()
                        .parse()
                        .expect("a postgres user (it comes with Debian's postgresql)")
                };
                (id("-u"), id("-g"))
            });
            if let Some((uid, gid)) = user {
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown");
            }
            let server = Server { port, dir, user };
            let data = server.dir.join("data");
            server.run(
                Command::new(bin("initdb").expect("initdb"))
                    .arg("-D")
                    .arg(&data)
                    .args([
                        "-U",
                        "sluice",
                        "--auth=trust",
                        "-E",
                        "UTF8",
                        "--no-sync",
                        "--no-instructions",
                    ]),
            );
            server.start_again();
            server
        }

        /// `postgres://sluice@127.0.0.1:PORT/postgres`.
        pub fn url(&self) -> String {
            format!("postgres://sluice@127.0.0.1:{}/postgres", self.port)
        }

        /// Starts the stopped server again, on the same port, with its data.
        pub fn start_again(&self) {
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
                self.port,
                self.dir.display()
            );
            self.run(
                Command::new(bin("pg_ctl").expect("pg_ctl"))
                    .arg("-D")
                    .arg(self.dir.join("data"))
                    .args(["-o", &options, "-l"])
                    .arg(self.dir.join("log"))
                    .args(["-w", "-t", "60", "start"]),
            );
        }

        /// Stops it at once, as a crash would (connections are cut, not closed).
        pub fn stop(&self) {
            self.run(
                Command::new(bin("pg_ctl").expect("pg_ctl"))
                    .arg("-D")
                    .arg(self.dir.join("data"))
                    .args(["-m", "immediate", "-w", "stop"]),
            );
        }

        fn run(&self, command: &mut Command) {
            if let Some((uid, gid)) = self.user {
                command.uid(uid).gid(gid);
            }
            let out = command
                .current_dir(&self.dir)
                .stdin(Stdio::null())
                .output()
                .expect("running PostgreSQL's tools");
            assert!(
                out.status.success(),
                "{command:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let mut stop = Command::new(bin("pg_ctl").unwrap_or_default());
            stop.arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some((uid, gid)) = self.user {
                stop.uid(uid).gid(gid);
            }
            let _ = stop.status();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A PostgreSQL program: on the PATH, or where Debian puts it (newest version first).
    fn bin(name: &str) -> Option<PathBuf> {
        let on_path = std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(name))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|dir| {
                dir.flatten()
                    .map(|v| v.path().join("bin").join(name))
                    .collect()
            })
            .unwrap_or_default();
        debian.sort();
        debian.reverse();
        on_path
            .into_iter()
            .chain(debian)
            .find(|p| Path::new(p).is_file())
    }
}
