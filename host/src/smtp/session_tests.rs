//! The session's state machine, driven in memory: a real [`Session`] on the default chain
//! (the built-in `networks`) over a pipe, with a spool in a temporary directory. What the
//! end-to-end tests check through the binary, these check at the protocol's edges.

use super::*;
use crate::config::Config;
use crate::policy::manifest::{self, Mode, ModuleSource, OnError, PolicySpec};
use crate::policy::{Chain, PolicyEngine};
use crate::queue::Spool;
use std::sync::OnceLock;
use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream};

fn engine() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE.get_or_init(|| PolicyEngine::new(64).expect("the policy engine"))
}

/// The client's end of an in-memory session.
struct Client {
    io: BufReader<DuplexStream>,
    spool: Arc<Spool>,
    _dir: tempfile::TempDir,
}

/// A session from `peer` on the default chain with `helo` checking HELO names first, and
/// the configuration changed by `configure`.
async fn connect(peer: &str, configure: impl FnOnce(&mut Config)) -> Client {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path()).unwrap());
    let mut config = Config {
        hostname: "relay.test".into(),
        ..Config::default()
    };
    configure(&mut config);
    let helo = PolicySpec {
        name: "helo".into(),
        source: ModuleSource::Builtin("helo".into()),
        mode: Mode::Enforce,
        on_error: OnError::Tempfail,
        timeout: std::time::Duration::from_secs(5),
        max_memory: 32 << 20,
        config: Default::default(),
        hooks: None,
        reuse: true,
    };
    let mut specs = vec![helo];
    specs.extend(manifest::default_chain());
    let chain = Chain::from_specs(engine(), specs).unwrap();
    let ctx = Arc::new(ServerContext::without_delivery(config, chain, spool.clone()).unwrap());
    let facts = SessionFacts::new(
        SocketAddr::new(peer.parse().unwrap(), 40000),
        "127.0.0.1:25".parse().unwrap(),
        "test",
    );
    let (relay_side, client_side) = tokio::io::duplex(64 << 10);
    tokio::spawn(Session::new(ctx, Stream::Local(relay_side), facts).run());
    Client {
        io: BufReader::new(client_side),
        spool,
        _dir: dir,
    }
}

impl Client {
    async fn send(&mut self, text: &str) {
        self.io.get_mut().write_all(text.as_bytes()).await.unwrap();
    }

    /// The next reply: its code and its lines' text; `None` once the session has closed.
    async fn reply(&mut self) -> Option<(u16, Vec<String>)> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                self.io.read_line(&mut line),
            );
            if read.await.expect("a reply in time").unwrap() == 0 {
                return None;
            }
            assert!(line.ends_with("\r\n"), "{line:?}");
            let code = line[..3].parse().unwrap();
            lines.push(line[4..].trim_end().to_string());
            if line.as_bytes()[3] == b' ' {
                return Some((code, lines));
            }
        }
    }

    /// Sends a command and returns the code of its reply.
    async fn cmd(&mut self, line: &str) -> u16 {
        self.send(&format!("{line}\r\n")).await;
        self.reply().await.expect("a reply").0
    }
}

#[tokio::test]
async fn the_greeting_and_ehlo_name_the_relay_and_its_extensions() {
    let mut c = connect("127.0.0.1", |_| {}).await;
    let (code, greeting) = c.reply().await.unwrap();
    assert_eq!(
        (code, greeting[0].as_str()),
        (220, "relay.test ESMTP Sluice")
    );
    c.send("EHLO app.example.edu\r\n").await;
    let (code, lines) = c.reply().await.unwrap();
    assert_eq!(code, 250);
    assert_eq!(lines[0], "relay.test Hello [127.0.0.1]");
    for extension in ["PIPELINING", "8BITMIME", "STARTTLS", "CHUNKING"] {
        assert!(lines.iter().any(|l| l == extension), "{lines:?}");
    }
}

#[tokio::test]
async fn commands_out_of_order_are_refused_with_503() {
    let mut c = connect("127.0.0.1", |_| {}).await;
    c.reply().await;
    assert_eq!(c.cmd("MAIL FROM:<a@example.edu>").await, 503);
    assert_eq!(c.cmd("EHLO app.example.edu").await, 250);
    assert_eq!(c.cmd("RCPT TO:<b@example.org>").await, 503);
    assert_eq!(c.cmd("DATA").await, 503);
    assert_eq!(c.cmd("MAIL FROM:<a@example.edu>").await, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@example.edu>").await, 503);
    assert_eq!(c.cmd("DATA").await, 554);
}

#[tokio::test]
async fn after_a_refused_ehlo_the_session_is_as_if_never_greeted() {
    let mut c = connect("127.0.0.1", |_| {}).await;
    c.reply().await;
    assert_eq!(c.cmd("EHLO app.example.edu").await, 250);
    assert_eq!(c.cmd("EHLO printer&scanner.example.edu").await, 550);
    // The earlier greeting does not count any more: the refused one replaced it.
    assert_eq!(c.cmd("MAIL FROM:<a@example.edu>").await, 503);
}

#[tokio::test]
async fn rset_ends_the_transaction() {
    let mut c = connect("127.0.0.1", |_| {}).await;
    c.reply().await;
    c.cmd("EHLO app.example.edu").await;
    assert_eq!(c.cmd("MAIL FROM:<a@example.edu>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<b@example.org>").await, 250);
    assert_eq!(c.cmd("RSET").await, 250);
    assert_eq!(c.cmd("RCPT TO:<b@example.org>").await, 503);
    assert_eq!(c.cmd("MAIL FROM:<a@example.edu>").await, 250);
}

#[tokio::test]
async fn a_client_outside_the_networks_is_not_relayed_for() {
    let mut c = connect("192.0.2.7", |_| {}).await;
    c.reply().await;
    c.cmd("EHLO outside.example.net").await;
    c.cmd("MAIL FROM:<a@example.net>").await;
    c.send("RCPT TO:<b@example.org>\r\n").await;
    let (code, text) = c.reply().await.unwrap();
    assert_eq!(code, 554);
    assert_eq!(text[0], "5.7.1 <b@example.org>: Relay access denied");
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let mut c = connect("127.0.0.1", |_| {}).await;
    c.reply().await;
    c.send(
        "EHLO app.example.edu\r\nMAIL FROM:<a@example.edu>\r\nRCPT TO:<b@example.org>\r\n\
         RCPT TO:<c@example.org>\r\nDATA\r\n",
    )
    .await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(c.reply().await.unwrap().0);
    }
    assert_eq!(codes, [250, 250, 250, 250, 354]);
    c.send("Subject: hi\r\n\r\nhello\r\n.\r\n").await;
    let (code, text) = c.reply().await.unwrap();
    assert_eq!(code, 250, "{text:?}");
    assert!(text[0].starts_with("2.0.0 Ok: queued as "), "{text:?}");
    // Once the client has seen 250, the message is in the spool.
    assert_eq!(c.spool.list().unwrap().len(), 1);
}

#[tokio::test]
async fn too_many_errors_close_the_session_with_421() {
    let mut c = connect("127.0.0.1", |config| config.limits.max_errors = 3).await;
    c.reply().await;
    assert_eq!(c.cmd("BOGUS").await, 500);
    assert_eq!(c.cmd("BOGUS").await, 500);
    c.send("BOGUS\r\n").await;
    assert_eq!(c.reply().await.unwrap().0, 500);
    assert_eq!(c.reply().await.unwrap().0, 421);
    assert_eq!(c.reply().await, None);
}

#[tokio::test]
async fn quit_says_goodbye_and_closes() {
    let mut c = connect("127.0.0.1", |_| {}).await;
    c.reply().await;
    assert_eq!(c.cmd("QUIT").await, 221);
    assert_eq!(c.reply().await, None);
}
