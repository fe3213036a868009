//! `sluice session --peer IP [--tls] [--auth USER]`: an SMTP session typed at the terminal
//! as if from that client, through the configured policy chain. Every module's decision,
//! dry-run ones included, is shown on standard output before the reply it led to:
//!
//! ```text
//! RCPT TO:<a@example.org>
//!   [policy] rcpt <a@example.org>: networks=accept 41us
//! 250 2.1.5 Ok
//! ```
//!
//! (the relay's log goes to standard error). Nothing is delivered: an accepted message
//! goes to a throw-away spool that no queue runner reads.

use crate::config::Config;
use crate::policy::{Chain, PolicyEngine, SessionFacts};
use crate::queue::Spool;
use crate::registry::store::Store;
use crate::smtp::ServerContext;
use crate::smtp::session::Session;
use crate::smtp::stream::Stream;
use arc_swap::ArcSwap;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Who the simulated client is.
pub struct Client {
    pub peer: IpAddr,
    pub tls: bool,
    pub auth: Option<String>,
}

/// Runs one session on standard input and output.
pub async fn run(config: Config, client: Client) -> ExitCode {
    match session(config, client).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn session(config: Config, client: Client) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut engine = PolicyEngine::new(1)?;
    // The registry as it stands, so a registered or blocked client is seen as such.
    let location = crate::store::Location::of(&config);
    let store = tokio::task::spawn_blocking(move || {
        Store::open_existing(&location)?
            .map(|mut s| s.table())
            .transpose()
    });
    if let Some(table) = store.await?? {
        engine = engine.with_registry(Arc::new(ArcSwap::from_pointee(table)));
    }
    let chain = Chain::open(&engine, &config.policies.dir)
        .await
        .map_err(|e| anyhow::anyhow!("policies: {e}"))?
        // Printed before the session writes its reply, which the terminal task prints only
        // once it has read it: each decision comes out before the reply it led to.
        .with_observer(Box::new(|d| println!("  [policy] {}: {d}", d.heading())));
    // The throw-away spool is this session's own.
    let spool_dir = crate::private::create_temp_dir("sluice-session")?;
    let spool = Arc::new(Spool::open(&spool_dir)?);
    let listener = config
        .listeners
        .first()
        .map(|l| l.name())
        .unwrap_or_else(|| "session".into());
    let ctx = Arc::new(ServerContext::without_delivery(config, chain, spool)?);
    let local = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 25);
    let mut facts = SessionFacts::new(SocketAddr::new(client.peer, 40000), local, &listener);
    facts.tls = client.tls.then(|| {
        (
            "TLSv1.3".into(),
            "TLS13_AES_256_GCM_SHA384 (simulated)".into(),
        )
    });
    facts.authenticated_user = client.auth;
    let (relay_side, terminal_side) = tokio::io::duplex(64 * 1024);
    tokio::spawn(terminal(terminal_side));
    Session::new(ctx, Stream::Local(relay_side), facts)
        .run()
        .await;
    let _ = std::fs::remove_dir_all(&spool_dir);
    Ok(())
}

/// Carries lines typed at the terminal to the session, each ended with CRLF as SMTP wants
/// (a terminal sends bare LF, which the relay refuses inside a message), and the
/// session's replies back to standard output.
///
/// One command at a time: the next is sent only once the last one's reply is printed, as
/// a client without PIPELINING would. So every decision the chain prints comes out after
/// the replies before it and before its own, even when the commands come all at once from
/// a file or a pipe (a pipelining client would get its replies in one batch, after the
/// decisions behind all of them).
async fn terminal(pipe: tokio::io::DuplexStream) {
    let (from_relay, mut to_relay) = tokio::io::split(pipe);
    let mut replies = BufReader::new(from_relay).lines();
    let mut typed = BufReader::new(tokio::io::stdin()).lines();
    // The greeting first.
    let mut open = print_reply(&mut replies).await.is_some();
    let mut in_message = false;
    while open {
        let Ok(Some(line)) = typed.next_line().await else {
            break;
        };
        let line = line.trim_end_matches('\r');
        if to_relay
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
        // Message text has no replies but the one to its end; a BDAT chunk follows its
        // command at once, so its reply comes after the chunk.
        let command = line.to_ascii_uppercase();
        if in_message {
            if line != "." {
                continue;
            }
            in_message = false;
        } else if command.starts_with("BDAT ") {
            continue;
        }
        match print_reply(&mut replies).await {
            Some(code) => in_message = command == "DATA" && code == 354,
            None => open = false,
        }
    }
    let _ = to_relay.shutdown().await;
    // Whatever the session still says (the replies to BDAT chunks, a last 421).
    while print_reply(&mut replies).await.is_some() {}
}

/// Prints one reply (every line of it) and returns its code; `None` when the session has
/// closed the connection.
async fn print_reply(
    replies: &mut tokio::io::Lines<BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>>,
) -> Option<u16> {
    let mut out = tokio::io::stdout();
    loop {
        let line = replies.next_line().await.ok()??;
        let _ = out.write_all(format!("{line}\n").as_bytes()).await;
        let _ = out.flush().await;
        // The last line of a reply has a space (or nothing) after its code.
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.get(..3).and_then(|code| code.parse().ok()).or(Some(0));
        }
    }
}
