//! The relay's configuration: `sluice.toml`.
//!
//! Every key has a default, so an empty file (or none at all) runs a relay that listens on
//! 127.0.0.1:2525 and relays only for localhost. Unknown keys are errors: a typo in a
//! postmaster's configuration must not silently fall back to a default.
//!
//! Values are read straight into the types the relay uses ([`NextHop`], [`EnvelopeAddress`],
//! [`Duration`], [`Canonicalization`], [`TlsRule`]), so a value that reads is a value that
//! works: `sluice check-config` finds every bad value `sluice serve` would, and nothing
//! after this module parses configuration text again. Rules that tie keys together are
//! checked once the whole file is read ([`Config::parse`]). This module sits below every
//! other: of the relay it uses nothing, and of the mail crate its address rule.

use serde::Deserialize;
use sluice_mail::address::valid_address;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a configuration could not be used. Every message names the file, and the key where
/// the mistake is in one; it carries its cause's words, since the relay prints it alone.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value that does not read as its key's type.
    #[error("{path}{}: {}", place(*.line, .key.as_deref()), one_line(.source.message()))]
    Parse {
        path: PathBuf,
        /// Where in the file (1-based), when the parser knows.
        line: Option<usize>,
        /// The key the bad value is under (`delivery.smarthost`, `listener[0].addr`);
        /// `None` for a mistake in the TOML itself.
        key: Option<String>,
        #[source]
        source: Box<toml::de::Error>,
    },
    /// Each value reads, but breaks a rule (a lower bound, two keys that go together).
    #[error("{path}: key `{key}`: {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
}

impl ConfigError {
    /// A reading error from the TOML parser, placed by line and key.
    fn parse(
        path: &Path,
        text: &str,
        error: serde_path_to_error::Error<toml::de::Error>,
    ) -> ConfigError {
        // serde_path_to_error writes the top level as ".": no key to name.
        let key = Some(error.path().to_string()).filter(|k| k != ".");
        let source = Box::new(error.into_inner());
        let line = source.span().map(|span| {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            memchr::memchr_iter(b'\n', before).count() + 1
        });
        ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            key,
            source,
        }
    }

    fn invalid(path: &Path, key: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            reason: reason.into(),
        }
    }
}

/// `:LINE: key `KEY``, as much of it as is known, for [`ConfigError::Parse`].
fn place(line: Option<usize>, key: Option<&str>) -> String {
    let line = line.map(|l| format!(":{l}")).unwrap_or_default();
    match key {
        Some(key) => format!("{line}: key `{key}`"),
        None => line,
    }
}

/// The parser's words on one line (some of its messages span several).
fn one_line(message: &str) -> String {
    message.trim_end().replace('\n', "; ")
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
    pub metrics: MetricsConfig,
    pub web: WebConfig,
    pub counters: CountersConfig,
    pub log: LogConfig,
    /// Where mail to `<postmaster>` (no domain, RFC 5321 4.5.1) goes (default:
    /// `postmaster@HOSTNAME`).
    pub postmaster: Option<EnvelopeAddress>,
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
    /// Open connections on this listener, within `limits.max_connections` (default: all of
    /// it for a relay listener; a quarter of it for submission and smtps, which are
    /// reachable from anywhere and must not take the campus systems' places).
    pub max_connections: Option<usize>,
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
    /// How many connections this listener takes at once, given the relay's `limits`.
    pub fn connection_limit(&self, limits: &Limits) -> usize {
        self.max_connections.unwrap_or(match self.kind {
            ListenerKind::Relay => limits.max_connections,
            _ => (limits.max_connections / 4).max(1),
        })
    }

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
    #[serde(default)]
    pub canonicalization: Canonicalization,
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

    /// The key file of the selector signing now.
    pub fn active_key(&self) -> Option<&PathBuf> {
        self.keys.get(&self.selector).or(self.key.as_ref())
    }
}

/// How a DKIM signature treats white space and case (RFC 6376 3.4), for the header and
/// the body. Written `HEADER/BODY`, each `relaxed` or `simple`; a lone word is the header's
/// and the body's is `simple`, as in a signature's `c=` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Canonicalization {
    pub header: Canon,
    pub body: Canon,
}

/// One half of a [`Canonicalization`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canon {
    /// Nothing changed: any rewrite on the way breaks the signature.
    Simple,
    /// White space runs and (in the header) field-name case are forgiven.
    Relaxed,
}

/// A canonicalization that is neither `relaxed` nor `simple`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is neither relaxed nor simple (write HEADER/BODY, as relaxed/relaxed)")]
pub struct CanonicalizationError(String);

impl Default for Canonicalization {
    /// `relaxed/relaxed`: what survives the mailing lists and gateways on the way.
    fn default() -> Self {
        Self {
            header: Canon::Relaxed,
            body: Canon::Relaxed,
        }
    }
}

impl TryFrom<String> for Canonicalization {
    type Error = CanonicalizationError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        let canon = |part: &str| match part {
            "relaxed" => Ok(Canon::Relaxed),
            "simple" => Ok(Canon::Simple),
            _ => Err(CanonicalizationError(part.to_string())),
        };
        let (header, body) = text.split_once('/').unwrap_or((&text, "simple"));
        Ok(Canonicalization {
            header: canon(header)?,
            body: canon(body)?,
        })
    }
}

/// SMTP AUTH on the submission and smtps listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Failed attempts at one user from one client address within `failure_window`, after
    /// which that user's attempts from there are refused until the window has passed; an
    /// address is refused altogether after `auth::USERS_PER_ADDRESS` times this many
    /// failures, whatever users they were against.
    pub max_failures: u32,
    #[serde(with = "duration")]
    pub failure_window: Duration,
    /// The wait before answering a failed attempt, times the failures so far (at most 5).
    #[serde(with = "duration")]
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
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    /// Pause before the greeting; a client that talks before it is refused.
    #[serde(with = "duration")]
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
    /// Longest a session may last, however busy: a client that sends a byte every few
    /// seconds never trips `command_timeout`, and must not hold a connection for hours.
    #[serde(with = "duration")]
    pub session_timeout: Duration,
    /// Longest the text of one message may take to arrive (DATA, or all of its BDAT chunks).
    #[serde(with = "duration")]
    pub data_timeout: Duration,
    /// NOOP, RSET, VRFY and HELP a session may send between two messages before the relay
    /// hangs up (Postfix's `smtpd_junk_command_limit`): they cost nothing to send, and would
    /// keep an idle session alive for ever.
    pub max_junk_commands: usize,
    /// Most header fields in a message: each module at the data hook is handed them all.
    pub max_header_fields: usize,
    /// Largest header section of a message, in bytes.
    pub max_header_size: usize,
    /// On SIGTERM, how long sessions in the middle of a message and deliveries under way
    /// have to finish before the relay exits anyway (systemd's `TimeoutStopSec` must be
    /// longer).
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
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
            session_timeout: Duration::from_secs(30 * 60),
            data_timeout: Duration::from_secs(10 * 60),
            max_junk_commands: 100,
            max_header_fields: 1000,
            max_header_size: 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
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
    pub smarthost: Option<NextHop>,
    /// Back-off between attempts ("1m", "5m", ...); the last interval repeats.
    #[serde(with = "duration::list")]
    pub retry_intervals: Vec<Duration>,
    /// How long a message may wait before it is given up.
    #[serde(with = "duration")]
    pub max_queue_lifetime: Duration,
    /// Time to connect to the next hop and for each reply.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Messages delivered at once.
    pub concurrency: usize,
    /// Connections open at once to one next hop.
    pub connections_per_destination: usize,
    /// Where mail for a domain goes, instead of its MX ("HOST:PORT"); for operators
    /// pinning a domain to a host, and for tests.
    pub routes: BTreeMap<String, NextHop>,
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

/// Where a message goes next: a host name or IP address, and a port. Written `HOST:PORT`,
/// `HOST` (port 25) or `[IPV6]:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct NextHop {
    pub host: String,
    pub port: u16,
}

/// Why a text is not a [`NextHop`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NextHopError {
    #[error("`{0}`: missing `]`")]
    UnclosedBracket(String),
    #[error("`{text}`: `{port}` is not a port number")]
    BadPort { text: String, port: String },
    #[error("`{0}`: expected HOST:PORT")]
    BadHost(String),
}

impl NextHop {
    /// Parses `HOST:PORT`, `HOST` (port 25) or `[IPV6]:PORT`.
    pub fn parse(text: &str) -> Result<NextHop, NextHopError> {
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, rest) = rest
                .split_once(']')
                .ok_or_else(|| NextHopError::UnclosedBracket(text.to_string()))?;
            (host, rest.strip_prefix(':'))
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            }
        };
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| NextHopError::BadPort {
                text: text.to_string(),
                port: p.to_string(),
            })?,
            None => 25,
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(NextHopError::BadHost(text.to_string()));
        }
        Ok(NextHop {
            host: host.to_string(),
            port,
        })
    }
}

impl TryFrom<String> for NextHop {
    type Error = NextHopError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        NextHop::parse(&text)
    }
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// An address the relay puts in envelopes it writes itself (the sender of notices),
/// held to the rule the session holds clients' addresses to ([`valid_address`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct EnvelopeAddress(String);

/// A text that is not a plain address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a plain address (user@domain)")]
pub struct AddressError(String);

impl EnvelopeAddress {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EnvelopeAddress {
    type Error = AddressError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        if valid_address(&text) {
            Ok(EnvelopeAddress(text))
        } else {
            Err(AddressError(text))
        }
    }
}

impl fmt::Display for EnvelopeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Durations as people write them ("90s", "5m", "1h 30m"), for `#[serde(with)]`; a bad one
/// is refused with humantime's reason (an unknown unit, a missing number).
mod duration {
    use serde::{Deserialize, Deserializer, de::Error};
    use std::time::Duration;

    fn parse<E: Error>(text: &str) -> Result<Duration, E> {
        humantime::parse_duration(text)
            .map_err(|e| E::custom(format_args!("`{text}` is not a duration: {e}")))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse(&String::deserialize(d)?)
    }

    /// A list of durations.
    pub mod list {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
            Vec::<String>::deserialize(d)?
                .iter()
                .map(|text| parse(text))
                .collect()
        }
    }
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
    #[serde(with = "duration")]
    pub settle: Duration,
    /// Compiled modules, kept so a restart does not compile unchanged modules again
    /// (default: `cache` in the spool directory). Loaded as native code, so it must be
    /// the relay's alone: a link or another user's directory is refused, and one others
    /// could write to is emptied (see `policy::cache`); otherwise files the relay did not
    /// write there are left alone.
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

/// The store: the relay registry and its requests, the users, the portal's sign-ins and
/// tokens (see `store`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// An SQLite database (default: `sluice.db` in the spool directory).
    pub db: Option<PathBuf>,
    /// A PostgreSQL database the nodes of a relay share (`postgres://USER@HOST/DB`),
    /// instead of `db`.
    pub url: Option<String>,
}

/// The relay registry: the client addresses registered to relay (see `registry`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// A registration that has not relayed for this long is removed, and its contact told
    /// ("0s": never).
    #[serde(with = "duration")]
    pub expire_after: Duration,
    /// How often the relay writes when registrations last relayed, removes unused ones
    /// and catches up with changes it was not told of.
    #[serde(with = "duration")]
    pub check_interval: Duration,
    /// The sender of confirmations and expiry notices (default: `postmaster@HOSTNAME`).
    pub notices_from: Option<EnvelopeAddress>,
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

/// The Prometheus endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where `/metrics` is served over HTTP (absent: no endpoint). The metrics name the
    /// modules and listeners, not addresses; keep it on loopback or a management network.
    pub addr: Option<SocketAddr>,
}

/// Where the policies' counters (`counters.incr`) are kept: in memory, or in Redis (or a
/// server speaking its protocol) shared by every node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CountersConfig {
    /// `redis://HOST:PORT[/DB]` (absent: in this node's memory).
    pub url: Option<String>,
    /// What a count does while Redis cannot be reached.
    pub on_unavailable: OnUnavailable,
    /// The longest one round trip to Redis may take before it counts as unavailable; keep
    /// it well under the counting modules' `timeout` (50 ms by default), which covers it.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for CountersConfig {
    fn default() -> Self {
        Self {
            url: None,
            on_unavailable: OnUnavailable::Local,
            timeout: Duration::from_millis(25),
        }
    }
}

/// What a count does while the shared counters cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// Count in this node's memory (with a warning and a metric): limits hold per node.
    Local,
    /// Refuse with 451 (421 at connect): nothing is relayed uncounted.
    Tempfail,
}

impl OnUnavailable {
    /// As written in the configuration (and the metrics' `then` label).
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnavailable::Local => "local",
            OnUnavailable::Tempfail => "tempfail",
        }
    }
}

/// The registration portal (see `web`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Where the portal is served (absent: no portal). HTTPS with the relay's certificate;
    /// plain HTTP only from loopback or `trusted_proxies`.
    pub addr: Option<SocketAddr>,
    /// The portal's address as its users reach it, for the links in sign-in mail
    /// (default: `https://HOSTNAME:PORT`).
    pub url: Option<String>,
    /// Who may ask for a sign-in link: addresses in these domains and their subdomains.
    pub domains: Vec<String>,
    /// Reverse proxies that may speak plain HTTP to the portal and whose `user_header`
    /// is believed (single sign-on through Shibboleth or an OIDC proxy).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The header a trusted proxy names the signed-in user with (e.g. `X-Remote-User`).
    pub user_header: Option<String>,
    /// How long a portal session lasts after signing in.
    #[serde(with = "duration")]
    pub session_lifetime: Duration,
    /// The terms of use a department accepts with every request, one item each.
    pub terms: Vec<String>,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            addr: None,
            url: None,
            domains: Vec::new(),
            trusted_proxies: Vec::new(),
            user_header: None,
            session_lifetime: Duration::from_secs(8 * 3600),
            terms: DEFAULT_TERMS.map(String::from).to_vec(),
        }
    }
}

/// The terms of relaying from the seed services, shown with every request unless
/// `[web] terms` says others.
const DEFAULT_TERMS: [&str; 7] = [
    "The relay is only for systems, services and devices on the campus network, sending mail \
     in support of the organisation's teaching, research or administration.",
    "Only staff of the organisation may request relaying, and the admin of record answers for \
     the system registered.",
    "Mail servers, and servers that accept mail from others on port 25, must not use the relay.",
    "End-user workstations may not use the relay: people send with their own accounts.",
    "Sending spam, phishing or offensive content is prohibited.",
    "Protected health information is never sent unencrypted to addresses outside the \
     organisation.",
    "A registration unused for a long time is removed; the postmaster may block a system \
     that breaks these terms, and refers the matter for investigation.",
];

/// How the relay writes its log.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// What is logged, as tracing's filters say it: a level (`info`, the default; `debug`),
    /// or targets with levels (`info,sluice::policy=debug`). `SLUICE_LOG` overrides it.
    /// Taken up by a reload.
    pub level: Option<String>,
    /// A file to append to instead of stderr; reopened on SIGUSR1 (for logrotate).
    pub file: Option<PathBuf>,
}

/// The log's line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// tracing's lines: time, level, target, message and fields.
    #[default]
    Text,
    /// Postfix's syslog lines (`Mon DD HH:MM:SS host sluice/smtpd[pid]: QUEUEID: ...`),
    /// which pflogsumm and other log analysers read.
    Maillog,
    /// One JSON object a line.
    Json,
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
                max_connections: None,
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
            metrics: MetricsConfig::default(),
            web: WebConfig::default(),
            counters: CountersConfig::default(),
            log: LogConfig::default(),
            postmaster: None,
        }
    }
}

/// Do two parts of a configuration differ? Compared by their debug form: every part has
/// one, and a difference in it is a difference in what was configured.
fn differ(a: &impl fmt::Debug, b: &impl fmt::Debug) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

impl Config {
    /// The keys that differ between the running configuration and `new` and take effect
    /// only at a restart: what is bound, opened or sized when the relay starts.
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let keys: [(&'static str, bool); 13] = [
            ("listener", differ(&self.listeners, &new.listeners)),
            ("spool", differ(&self.spool, &new.spool)),
            ("store", differ(&self.store, &new.store)),
            ("admin", differ(&self.admin, &new.admin)),
            ("policies", differ(&self.policies, &new.policies)),
            ("metrics", differ(&self.metrics, &new.metrics)),
            ("web", differ(&self.web, &new.web)),
            ("counters", differ(&self.counters, &new.counters)),
            ("log.format", self.log.format != new.log.format),
            ("log.file", self.log.file != new.log.file),
            // The files: their contents are reloaded, where they are is not.
            ("tls", differ(&self.tls, &new.tls)),
            (
                "limits.max_connections",
                self.limits.max_connections != new.limits.max_connections,
            ),
            ("hostname", self.hostname != new.hostname),
        ];
        keys.into_iter()
            .filter_map(|(key, differs)| differs.then_some(key))
            .collect()
    }

    /// The sections that differ between the running configuration and `new` and are
    /// taken up by a reload.
    pub fn reloadable_changes(&self, new: &Config) -> Vec<&'static str> {
        let sections: [(&'static str, bool); 7] = [
            ("limits", differ(&self.limits, &new.limits)),
            ("delivery", differ(&self.delivery, &new.delivery)),
            ("auth", differ(&self.auth, &new.auth)),
            ("registry", differ(&self.registry, &new.registry)),
            ("dkim", differ(&self.dkim, &new.dkim)),
            ("postmaster", differ(&self.postmaster, &new.postmaster)),
            ("log.level", self.log.level != new.log.level),
        ];
        sections
            .into_iter()
            .filter_map(|(key, differs)| differs.then_some(key))
            .collect()
    }

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

    /// The mailbox `RCPT TO:<postmaster>` reaches (default: `postmaster@HOSTNAME`).
    pub fn postmaster(&self) -> String {
        match &self.postmaster {
            Some(address) => address.to_string(),
            None => format!("postmaster@{}", self.hostname),
        }
    }

    /// Who notices from the relay come from (default: `postmaster@HOSTNAME`).
    pub fn notices_from(&self) -> String {
        match &self.registry.notices_from {
            Some(from) => from.to_string(),
            None => format!("postmaster@{}", self.hostname),
        }
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
        let config: Config = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| ConfigError::parse(path, text, e))?;
        config.check(path)?;
        Ok(config)
    }

    /// The rules no single value can break alone: bounds, and keys that go together.
    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid =
            |key: &'static str, reason: String| Err(ConfigError::invalid(path, key, reason));
        if self.hostname.is_empty() || self.hostname.contains(char::is_whitespace) {
            return invalid("hostname", "must be a domain name".into());
        }
        if self.listeners.is_empty() {
            return invalid("listener", "at least one [[listener]] is needed".into());
        }
        if let Some(l) = self
            .listeners
            .iter()
            .find(|l| l.proxy_protocol && l.proxy_from.is_empty())
        {
            return invalid(
                "listener.proxy_from",
                format!(
                    "listener {}: proxy_protocol needs proxy_from, the load balancers' addresses",
                    l.addr
                ),
            );
        }
        if let Some(l) = self.listeners.iter().find(|l| {
            l.max_connections
                .is_some_and(|n| n == 0 || n > self.limits.max_connections)
        }) {
            return invalid(
                "listener.max_connections",
                format!(
                    "listener {}: must be from 1 to limits.max_connections ({})",
                    l.addr, self.limits.max_connections
                ),
            );
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return invalid("tls", "set both `cert` and `key`, or neither".into());
        }
        self.limits.check(path)?;
        self.delivery.check(path)?;
        if let Some(dkim) = &self.dkim {
            dkim.check(path)?;
        }
        if self.auth.max_failures == 0 {
            return invalid("auth.max_failures", "must be at least 1".into());
        }
        if self.registry.check_interval < Duration::from_millis(100) {
            return invalid("registry.check_interval", "must be at least 100ms".into());
        }
        if let Some(url) = &self.store.url {
            if self.store.db.is_some() {
                return invalid("store.url", "one store: db or url, not both".into());
            }
            if let Err(e) = url.parse::<postgres::Config>() {
                return invalid("store.url", format!("not a PostgreSQL URL: {e}"));
            }
        }
        if let Some(url) = &self.counters.url
            && !url.starts_with("redis://")
        {
            return invalid("counters.url", "must be redis://HOST:PORT".into());
        }
        if self.counters.timeout.is_zero() {
            return invalid("counters.timeout", "must be more than 0s".into());
        }
        self.web.check(path)
    }
}

impl WebConfig {
    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid =
            |key: &'static str, reason: &str| Err(ConfigError::invalid(path, key, reason));
        if let Some(url) = &self.url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return invalid(
                "web.url",
                "must start with https:// (or http:// behind a proxy)",
            );
        }
        if self
            .domains
            .iter()
            .any(|d| d.is_empty() || d.contains(['@', ' ', '/']))
        {
            return invalid("web.domains", "must be domain names (example.edu)");
        }
        if self.user_header.is_some() && self.trusted_proxies.is_empty() {
            return invalid(
                "web.user_header",
                "needs trusted_proxies: the header is believed only from them",
            );
        }
        if self.session_lifetime.is_zero() {
            return invalid("web.session_lifetime", "must be more than 0s");
        }
        if self.addr.is_some() && self.terms.is_empty() {
            return invalid(
                "web.terms",
                "a request must be shown terms of use to accept",
            );
        }
        Ok(())
    }
}

impl Limits {
    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid =
            |key: &'static str, reason: &str| Err(ConfigError::invalid(path, key, reason));
        if self.max_recipients == 0 {
            return invalid("limits.max_recipients", "must be at least 1");
        }
        if self.max_message_size < 1024 {
            return invalid("limits.max_message_size", "must be at least 1024 bytes");
        }
        if self.command_line_length < 512 {
            // RFC 5321 4.5.3.1.4: a server must take command lines of 512 octets.
            return invalid("limits.command_line_length", "must be at least 512");
        }
        if self.text_line_length < 998 {
            return invalid("limits.text_line_length", "must be at least 998 (RFC 5321)");
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return invalid("limits.max_connections", "must be at least 1");
        }
        if self.max_header_fields < 50 || self.max_header_size < 64 * 1024 {
            // A real message carries dozens of trace and authentication fields.
            return invalid(
                "limits.max_header_fields",
                "max_header_fields must be at least 50 and max_header_size at least 65536",
            );
        }
        if self.session_timeout < self.command_timeout || self.data_timeout.is_zero() {
            return invalid(
                "limits.session_timeout",
                "session_timeout must be at least command_timeout, and data_timeout above zero",
            );
        }
        Ok(())
    }
}

impl DeliveryConfig {
    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid =
            |key: &'static str, reason: &str| Err(ConfigError::invalid(path, key, reason));
        if self.retry_intervals.is_empty() {
            return invalid(
                "delivery.retry_intervals",
                "must list at least one interval",
            );
        }
        if self.concurrency == 0 {
            return invalid("delivery.concurrency", "must be at least 1");
        }
        if self.connections_per_destination == 0 {
            return invalid("delivery.connections_per_destination", "must be at least 1");
        }
        Ok(())
    }
}

impl DkimConfig {
    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        if self.active_key().is_none() {
            return Err(ConfigError::invalid(
                path,
                "dkim.key",
                format!(
                    "no key for selector {:?}: set `key`, or `keys.{0}`",
                    self.selector
                ),
            ));
        }
        if !self.headers.iter().any(|h| h.eq_ignore_ascii_case("From")) {
            return Err(ConfigError::invalid(
                path,
                "dkim.headers",
                "must include From (RFC 6376 5.4)",
            ));
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

    /// The message `sluice check-config` (and `serve`) prints for `text` as `s.toml`.
    fn error(text: &str) -> String {
        Config::parse(text, Path::new("s.toml"))
            .expect_err("refused")
            .to_string()
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

    #[test]
    fn the_store_is_one_sqlite_file_or_one_postgresql_url() {
        let path = Path::new("s.toml");
        let shared = "[store]\nurl = \"postgres://sluice@db.example.edu/sluice\"\n";
        let config = Config::parse(shared, path).unwrap();
        assert_eq!(
            crate::store::Location::of(&config).to_string(),
            "postgres://sluice@db.example.edu:5432/sluice"
        );
        for bad in [
            "[store]\nurl = \"postgres://db/x\"\ndb = \"x.db\"\n",
            "[store]\nurl = \"postgres://db/x?nonsense=1\"\n",
        ] {
            let e = Config::parse(bad, path).unwrap_err().to_string();
            assert!(e.contains("store.url"), "{bad}: {e}");
        }
        let secret = "[store]\nurl = \"postgres://sluice:hunter2@db/x\"\n";
        let config = Config::parse(secret, path).unwrap();
        assert!(
            !crate::store::Location::of(&config)
                .to_string()
                .contains("hunter2")
        );
    }

    #[test]
    fn the_portal_is_off_by_default_and_its_keys_are_checked() {
        let path = Path::new("s.toml");
        let config = Config::parse("", path).unwrap();
        assert!(config.web.addr.is_none());
        assert!(!config.web.terms.is_empty(), "the seeds' terms by default");
        let on = "[web]\naddr = \"127.0.0.1:8025\"\ndomains = [\"example.edu\"]\n";
        assert_eq!(
            Config::parse(on, path).unwrap().web.session_lifetime,
            Duration::from_secs(8 * 3600)
        );
        for (bad, key) in [
            ("url = \"relay.example.edu\"", "web.url"),
            ("user_header = \"X-Remote-User\"", "web.user_header"),
            ("domains = [\"jdoe@example.edu\"]", "web.domains"),
            ("terms = []", "web.terms"),
        ] {
            let text = format!("[web]\naddr = \"127.0.0.1:8025\"\n{bad}\n");
            let e = Config::parse(&text, path).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn values_are_read_into_their_types() {
        let text = r#"
[delivery]
smarthost = "[::1]:2600"
retry_intervals = ["90s", "1h 30m"]
routes = { "bank.example" = "mx.bank.example" }
tls_policy = { "bank.example" = "verify" }
[registry]
notices_from = "relay-admin@example.edu"
[dkim]
domain = "example.edu"
selector = "s1"
key = "s1.pem"
canonicalization = "simple"
"#;
        let c = Config::parse(text, Path::new("s.toml")).unwrap();
        let d = &c.delivery;
        assert_eq!(
            d.smarthost,
            Some(NextHop {
                host: "::1".into(),
                port: 2600
            })
        );
        assert_eq!(d.routes["bank.example"].port, 25);
        assert_eq!(d.tls_policy["bank.example"], TlsRule::Verify);
        assert_eq!(d.retry_intervals[1], Duration::from_secs(5400));
        assert_eq!(c.notices_from(), "relay-admin@example.edu");
        let dkim = c.dkim.unwrap();
        assert_eq!(
            (dkim.canonicalization.header, dkim.canonicalization.body),
            (Canon::Simple, Canon::Simple),
            "a lone word is the header's; the body's is simple"
        );
    }

    #[test]
    fn next_hops_read_as_host_and_port() {
        assert_eq!(
            NextHop::parse("127.0.0.1:2600"),
            Ok(NextHop {
                host: "127.0.0.1".into(),
                port: 2600
            })
        );
        assert_eq!(NextHop::parse("mx.example.edu").unwrap().port, 25);
        assert_eq!(NextHop::parse("[::1]:26").unwrap().to_string(), "[::1]:26");
        assert!(matches!(
            NextHop::parse("host:port"),
            Err(NextHopError::BadPort { .. })
        ));
        assert!(matches!(
            NextHop::parse("[::1:26"),
            Err(NextHopError::UnclosedBracket(_))
        ));
        assert!(matches!(
            NextHop::parse(":25"),
            Err(NextHopError::BadHost(_))
        ));
    }

    #[test]
    fn a_bad_next_hop_names_the_file_line_and_key() {
        assert_eq!(
            error(
                "hostname = \"relay.example.edu\"\n[delivery]\nsmarthost = \"relay.example.edu:smtp\"\n"
            ),
            "s.toml:3: key `delivery.smarthost`: `relay.example.edu:smtp`: `smtp` is not a port number"
        );
        let e = error("[delivery.routes]\n\"bank.example\" = \"mx bank:25\"\n");
        assert!(
            e.starts_with(
                "s.toml:2: key `delivery.routes.bank.example`: `mx bank:25`: expected HOST:PORT"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_bad_address_names_the_file_and_key() {
        let e = error("[registry]\nnotices_from = \"postmaster\"\n");
        assert_eq!(
            e,
            "s.toml:2: key `registry.notices_from`: `postmaster` is not a plain address (user@domain)"
        );
        let e = error("[registry]\nnotices_from = \"a@b> X=y\"\n");
        assert!(e.contains("key `registry.notices_from`"), "{e}");
    }

    #[test]
    fn a_bad_duration_names_the_file_key_and_reason() {
        let e = error("[limits]\ncommand_timeout = \"5 minuts\"\n");
        assert!(
            e.starts_with("s.toml:2: key `limits.command_timeout`: `5 minuts` is not a duration: unknown time unit \"minuts\""),
            "{e}"
        );
        let e = error("[delivery]\nretry_intervals = [\"1m\", \"soon\"]\n");
        assert!(
            e.starts_with("s.toml:2: key `delivery.retry_intervals`: `soon` is not a duration"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_canonicalization_names_the_file_and_key() {
        let e = error(
            "[dkim]\ndomain = \"example.edu\"\nselector = \"s1\"\nkey = \"k.pem\"\ncanonicalization = \"relaxed/loose\"\n",
        );
        assert_eq!(
            e,
            "s.toml:5: key `dkim.canonicalization`: `loose` is neither relaxed nor simple (write HEADER/BODY, as relaxed/relaxed)"
        );
    }

    #[test]
    fn a_bad_tls_rule_names_the_file_and_key() {
        let e = error("[delivery.tls_policy]\n\"bank.example\" = \"sometimes\"\n");
        assert!(
            e.starts_with(
                "s.toml:2: key `delivery.tls_policy.bank.example`: unknown variant `sometimes`"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_mistake_in_the_toml_itself_names_the_line() {
        let e = error("hostname = \"relay.example.edu\"\n[limits\n");
        assert!(e.starts_with("s.toml:2: "), "{e}");
        assert!(!e.contains("key"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn the_cause_is_kept() {
        let e = Config::parse("[delivery]\ntimeout = 5\n", Path::new("s.toml")).unwrap_err();
        let ConfigError::Parse { key, source, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(key.as_deref(), Some("delivery.timeout"));
        assert!(std::error::Error::source(&e).is_some());
        assert!(source.message().contains("invalid type"), "{source}");
    }

    #[test]
    fn check_config_reads_the_file_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, "[delivery]\nsmarthost = \"relay:smtp\"\n").unwrap();
        let e = Config::load(Some(path.as_path())).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}:2: key `delivery.smarthost`", path.display())),
            "{e}"
        );
        let missing = dir.path().join("none.toml");
        assert!(matches!(
            Config::load(Some(missing.as_path())),
            Err(ConfigError::Read { .. })
        ));
    }
}
