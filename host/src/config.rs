//! The relay's configuration: `sluice.toml`.
//!
//! Every key has a default, so an empty file (or none at all) runs a relay that listens on
//! 127.0.0.1:2525 and relays only for localhost. Unknown keys are errors: a typo in a
//! postmaster's configuration must not silently fall back to a default.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a configuration could not be used; the message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The relay's own name: the greeting, Received headers, Message-IDs and EHLO to next hops.
    pub hostname: String,
    /// Where SMTP clients connect.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    pub tls: TlsConfig,
    pub limits: Limits,
    pub spool: SpoolConfig,
    pub delivery: DeliveryConfig,
    pub policies: PoliciesConfig,
    pub admin: AdminConfig,
    pub registry: RegistryConfig,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    /// DKIM signing of every accepted message; absent, nothing is signed.
    pub dkim: Option<DkimConfig>,
}

/// One listening socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    /// The name policies see (`session.connection().listener`); defaults to the kind for
    /// `submission` and `smtps`, to the address for `relay`.
    pub name: Option<String>,
    #[serde(default)]
    pub kind: ListenerKind,
    /// Every connection starts with a PROXY protocol header (v1 or v2) from a load
    /// balancer, naming the real client; a connection without one is refused.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// The load balancers allowed to send that header (CIDRs): a PROXY header names any
    /// address it likes, so it is believed from these and refused from anyone else.
    #[serde(default)]
    pub proxy_from: Vec<ipnet::IpNet>,
}

/// What a listener is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// Port 25 style: STARTTLS offered, no AUTH.
    #[default]
    Relay,
    /// Port 587 style: STARTTLS offered, AUTH only after it, and required before MAIL.
    Submission,
    /// Port 465 style: TLS from the first byte, AUTH required before MAIL.
    Smtps,
}

impl ListenerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Relay => "relay",
            ListenerKind::Submission => "submission",
            ListenerKind::Smtps => "smtps",
        }
    }

    /// Clients authenticate here (and must, before MAIL).
    pub fn authenticates(self) -> bool {
        self != ListenerKind::Relay
    }
}

impl ListenerConfig {
    /// The name policies and logs use for this listener.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| match self.kind {
            ListenerKind::Relay => self.addr.to_string(),
            kind => kind.as_str().to_string(),
        })
    }
}

/// DKIM signing (RFC 6376) for the relay's own domain. `sluice reload` (or SIGHUP) reads
/// this section again, so a key rotation needs no restart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector signing now (`s=`).
    pub selector: String,
    /// The key of `selector` (PKCS#8 PEM, RSA or Ed25519), unless `keys` names it.
    pub key: Option<PathBuf>,
    /// Keys by selector, for rotation: every one is loaded and checked, `selector` signs.
    #[serde(default)]
    pub keys: BTreeMap<String, PathBuf>,
    /// Header fields signed (those absent are signed as absent, so they cannot be added).
    #[serde(default = "DkimConfig::default_headers")]
    pub headers: Vec<String>,
    /// `relaxed/relaxed` (the default), `simple/simple`, `relaxed/simple` or `simple/relaxed`.
    #[serde(default = "DkimConfig::default_canonicalization")]
    pub canonicalization: String,
}

impl DkimConfig {
    fn default_headers() -> Vec<String> {
        [
            "From",
            "Sender",
            "Reply-To",
            "Subject",
            "Date",
            "Message-ID",
            "To",
            "Cc",
            "MIME-Version",
            "Content-Type",
            "Content-Transfer-Encoding",
            "In-Reply-To",
            "References",
            "List-Unsubscribe",
            "List-Unsubscribe-Post",
        ]
        .map(String::from)
        .to_vec()
    }

    fn default_canonicalization() -> String {
        "relaxed/relaxed".into()
    }

    /// The key file of the selector signing now.
    pub fn active_key(&self) -> Option<&PathBuf> {
        self.keys.get(&self.selector).or(self.key.as_ref())
    }
}

/// SMTP AUTH on the submission and smtps listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Failed attempts from one client address within `failure_window`, after which every
    /// attempt is refused until the window has passed.
    pub max_failures: u32,
    #[serde(with = "humantime_serde")]
    pub failure_window: Duration,
    /// The wait before answering a failed attempt, times the failures so far (at most 5).
    #[serde(with = "humantime_serde")]
    pub failure_delay: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            max_failures: 5,
            failure_window: Duration::from_secs(15 * 60),
            failure_delay: Duration::from_secs(1),
        }
    }
}

/// The certificate offered with STARTTLS.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain. Without `cert` and `key`, a self-signed certificate is made at start-up.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

/// Limits on everything a client controls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message accepted, in bytes (advertised as SIZE).
    pub max_message_size: usize,
    /// Recipients per transaction (RFC 5321 4.5.3.1.8 asks for at least 100).
    pub max_recipients: usize,
    /// Time allowed between commands, and for each read in DATA (RFC 5321 4.5.3.2: at least 5 minutes).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Pause before the greeting; a client that talks before it is refused.
    #[serde(with = "humantime_serde")]
    pub greeting_delay: Duration,
    /// Open SMTP connections in all.
    pub max_connections: usize,
    /// Open SMTP connections from one client IP.
    pub max_connections_per_ip: usize,
    /// Longest command line, CRLF included.
    pub command_line_length: usize,
    /// Longest line of message text, CRLF excluded (RFC 5321 4.5.3.1.6: 998).
    pub text_line_length: usize,
    /// Bad commands in one session before the relay hangs up.
    pub max_errors: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            command_timeout: Duration::from_secs(300),
            greeting_delay: Duration::ZERO,
            max_connections: 500,
            max_connections_per_ip: 50,
            command_line_length: 2048,
            text_line_length: 998,
            max_errors: 20,
        }
    }
}

/// Where accepted messages wait for delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// How an accepted message is made durable before its 250 (see `queue::spool`).
    pub sync: SpoolSync,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("var/spool"),
            sync: SpoolSync::Filesystem,
        }
    }
}

/// How the spool makes accepted messages durable. Both are as safe (`filesystem` on Linux
/// 5.8 or later, whose syncfs reports write errors); they differ in cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpoolSync {
    /// One syncfs(2) of the spool's filesystem for each batch of messages (group commit of
    /// the data, not only of the renames): the fastest, best with the spool on a filesystem
    /// of its own, as a busy neighbour's writes are flushed too.
    Filesystem,
    /// An fsync of every message file, then one of the queue directory for each batch.
    Files,
}

/// How the queue runner reaches the next hop.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Send everything to this host ("HOST:PORT"); without it, mail goes by MX (or by
    /// `routes`).
    pub smarthost: Option<String>,
    /// Back-off between attempts ("1m", "5m", ...); the last interval repeats.
    #[serde(deserialize_with = "durations")]
    pub retry_intervals: Vec<Duration>,
    /// How long a message may wait before it is given up.
    #[serde(with = "humantime_serde")]
    pub max_queue_lifetime: Duration,
    /// Time to connect to the next hop and for each reply.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Messages delivered at once.
    pub concurrency: usize,
    /// Connections open at once to one next hop.
    pub connections_per_destination: usize,
    /// Where mail for a domain goes, instead of its MX ("HOST:PORT"); for operators
    /// pinning a domain to a host, and for tests.
    pub routes: BTreeMap<String, String>,
    /// How a domain's mail must be encrypted: `opportunistic` (the default: STARTTLS when
    /// offered), `required` (never in clear: no STARTTLS or a failed handshake defers) or
    /// `verify` (required, and the certificate must be valid for the host).
    pub tls_policy: BTreeMap<String, TlsRule>,
    /// PEM certificates to verify next hops against, instead of the system's roots.
    pub ca_file: Option<PathBuf>,
}

/// How a domain's mail must be encrypted on its way to the next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsRule {
    /// STARTTLS when the next hop offers it, without checking its certificate (as
    /// Postfix's `may`): protection from passive listening.
    Opportunistic,
    /// TLS or nothing: no STARTTLS, or a failed handshake, defers the mail.
    Required,
    /// Required, and the certificate must be valid for the next hop's name.
    Verify,
}

impl TlsRule {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsRule::Opportunistic => "opportunistic",
            TlsRule::Required => "required",
            TlsRule::Verify => "verify",
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            smarthost: None,
            retry_intervals: [60, 300, 900, 1800, 3600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            max_queue_lifetime: Duration::from_secs(5 * 24 * 3600),
            timeout: Duration::from_secs(60),
            concurrency: 20,
            connections_per_destination: 10,
            routes: BTreeMap::new(),
            tls_policy: BTreeMap::new(),
            ca_file: None,
        }
    }
}

fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts
        .iter()
        .map(|t| humantime::parse_duration(t).map_err(serde::de::Error::custom))
        .collect()
}

/// Where the policy chain comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoliciesConfig {
    /// Holds `policies.toml` and the `.wasm` modules it names (created if missing).
    pub dir: PathBuf,
    /// Reload by itself when `policies.toml` or a `.wasm` file there changes.
    pub watch: bool,
    /// How long the directory must be quiet, and its files unchanged, before a change is
    /// loaded: a burst of writes (a copy, an editor's save) is one reload. A writer that
    /// pauses longer than this mid-file can be caught half-way; deploy by writing aside
    /// and renaming, which is always seen whole.
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
    /// Compiled modules, kept so a restart does not compile unchanged modules again
    /// (default: `cache` in the spool directory). Files the relay did not write there
    /// are left alone.
    pub cache_dir: Option<PathBuf>,
}

impl Default for PoliciesConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("policies.d"),
            watch: true,
            settle: Duration::from_millis(50),
            cache_dir: None,
        }
    }
}

/// The embedded store: the relay registry and the users of the submission listeners.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// An SQLite database (default: `sluice.db` in the spool directory).
    pub db: Option<PathBuf>,
}

/// The relay registry: the client addresses registered to relay (see `registry`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// A registration that has not relayed for this long is removed, and its contact told
    /// ("0s": never).
    #[serde(with = "humantime_serde")]
    pub expire_after: Duration,
    /// How often the relay writes when registrations last relayed, removes unused ones
    /// and catches up with changes it was not told of.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// The sender of confirmations and expiry notices (default: `postmaster@HOSTNAME`).
    pub notices_from: Option<String>,
    /// The last paragraph of every notice: how to change or remove a registration.
    pub how_to_change: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            expire_after: Duration::from_secs(180 * 24 * 3600),
            check_interval: Duration::from_secs(60),
            notices_from: None,
            how_to_change: "To change or remove this registration, write to the postmaster.".into(),
        }
    }
}

/// The control socket `sluice status` and `sluice reload` talk to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// A Unix socket, for the relay's user only (default: `sluice.sock` in the spool
    /// directory).
    pub socket: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            hostname: "localhost".into(),
            listeners: vec![ListenerConfig {
                addr: SocketAddr::from(([127, 0, 0, 1], 2525)),
                name: None,
                kind: ListenerKind::Relay,
                proxy_protocol: false,
                proxy_from: Vec::new(),
            }],
            tls: TlsConfig::default(),
            limits: Limits::default(),
            spool: SpoolConfig::default(),
            delivery: DeliveryConfig::default(),
            policies: PoliciesConfig::default(),
            admin: AdminConfig::default(),
            registry: RegistryConfig::default(),
            store: StoreConfig::default(),
            auth: AuthConfig::default(),
            dkim: None,
        }
    }
}

impl Config {
    /// Where compiled policy modules are kept (default: `cache` in the spool directory,
    /// which is the relay's own).
    pub fn cache_dir(&self) -> PathBuf {
        self.policies
            .cache_dir
            .clone()
            .unwrap_or_else(|| self.spool.dir.join("cache"))
    }

    /// The control socket of `sluice status`, `reload` and `queue` (default:
    /// `sluice.sock` in the spool directory).
    pub fn admin_socket(&self) -> PathBuf {
        self.admin
            .socket
            .clone()
            .unwrap_or_else(|| self.spool.dir.join("sluice.sock"))
    }

    /// The embedded store (default: `sluice.db` in the spool directory).
    pub fn store_db(&self) -> PathBuf {
        self.store
            .db
            .clone()
            .unwrap_or_else(|| self.spool.dir.join("sluice.db"))
    }

    /// Who notices from the relay come from (default: `postmaster@HOSTNAME`).
    pub fn notices_from(&self) -> String {
        self.registry
            .notices_from
            .clone()
            .unwrap_or_else(|| format!("postmaster@{}", self.hostname))
    }

    /// Reads and checks a configuration file. A missing `sluice.toml` in the working directory
    /// (no `--config` given) means the embedded defaults.
    pub fn load(path: Option<&Path>) -> Result<(Config, PathBuf), ConfigError> {
        let (path, must_exist) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from("sluice.toml"), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let config = Self::parse(&text, &path)?;
        Ok((config, path))
    }

    /// Parses configuration text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message: message.to_string(),
        };
        if self.hostname.is_empty() || self.hostname.contains(char::is_whitespace) {
            return Err(invalid("hostname", "must be a domain name"));
        }
        if self.listeners.is_empty() {
            return Err(invalid("listener", "at least one [[listener]] is needed"));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(invalid("tls", "set both `cert` and `key`, or neither"));
        }
        let l = &self.limits;
        if l.max_recipients == 0 {
            return Err(invalid("limits.max_recipients", "must be at least 1"));
        }
        if l.max_message_size < 1024 {
            return Err(invalid(
                "limits.max_message_size",
                "must be at least 1024 bytes",
            ));
        }
        if l.command_line_length < 512 {
            // RFC 5321 4.5.3.1.4: a server must take command lines of 512 octets.
            return Err(invalid(
                "limits.command_line_length",
                "must be at least 512",
            ));
        }
        if l.text_line_length < 998 {
            return Err(invalid(
                "limits.text_line_length",
                "must be at least 998 (RFC 5321)",
            ));
        }
        if l.max_connections == 0 || l.max_connections_per_ip == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if self.delivery.retry_intervals.is_empty() {
            return Err(invalid(
                "delivery.retry_intervals",
                "must list at least one interval",
            ));
        }
        if self.delivery.concurrency == 0 {
            return Err(invalid("delivery.concurrency", "must be at least 1"));
        }
        if let Some(host) = &self.delivery.smarthost {
            crate::delivery::NextHop::parse(host).map_err(|e| invalid("delivery.smarthost", &e))?;
        }
        if self.delivery.connections_per_destination == 0 {
            return Err(invalid(
                "delivery.connections_per_destination",
                "must be at least 1",
            ));
        }
        if let Some(dkim) = &self.dkim {
            if dkim.active_key().is_none() {
                return Err(invalid(
                    "dkim.key",
                    &format!(
                        "no key for selector {:?}: set `key`, or `keys.{0}`",
                        dkim.selector
                    ),
                ));
            }
            if dkim.headers.is_empty()
                || !dkim.headers.iter().any(|h| h.eq_ignore_ascii_case("From"))
            {
                return Err(invalid("dkim.headers", "must include From (RFC 6376 5.4)"));
            }
        }
        if let Some(l) = self
            .listeners
            .iter()
            .find(|l| l.proxy_protocol && l.proxy_from.is_empty())
        {
            return Err(invalid(
                "listener.proxy_from",
                &format!(
                    "listener {}: proxy_protocol needs proxy_from, the load balancers' addresses",
                    l.addr
                ),
            ));
        }
        if self.auth.max_failures == 0 {
            return Err(invalid("auth.max_failures", "must be at least 1"));
        }
        if self.registry.check_interval < Duration::from_millis(100) {
            return Err(invalid("registry.check_interval", "must be at least 100ms"));
        }
        if let Some(from) = &self.registry.notices_from
            && !crate::smtp::valid_address(from)
        {
            return Err(invalid(
                "registry.notices_from",
                "must be a plain address (user@domain)",
            ));
        }
        for (domain, host) in &self.delivery.routes {
            crate::delivery::NextHop::parse(host)
                .map_err(|e| invalid("delivery.routes", &format!("{domain}: {e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_means_defaults() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c.listeners[0].addr.port(), 2525);
        assert_eq!(c.limits.max_recipients, 100);
    }

    #[test]
    fn the_issue_example_parses() {
        let text = r#"
hostname = "relay.example.edu"
[[listener]]
addr = "127.0.0.1:2525"
[spool]
dir = "var/spool"
[delivery]
smarthost = "127.0.0.1:2600"
retry_intervals = ["1s", "5m"]
[policies]
dir = "policies.d"
"#;
        let c = Config::parse(text, Path::new("x.toml")).unwrap();
        assert_eq!(c.hostname, "relay.example.edu");
        assert_eq!(c.delivery.retry_intervals[1], Duration::from_secs(300));
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let e = Config::parse("[limits]\nmax_recipients = 0\n", Path::new("s.toml")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "s.toml: key `limits.max_recipients`: must be at least 1"
        );
        let e = Config::parse("[limits]\nmax_recipient = 5\n", Path::new("s.toml")).unwrap_err();
        assert!(e.to_string().contains("max_recipient"), "{e}");
    }
}
