//! `sluice session --peer IP [--tls] [--auth USER]`: an SMTP session typed at the terminal
//! as if from that client, through the configured policy chain, each module's decision
//! shown as it goes (on standard error). Nothing is delivered: an accepted message goes to
//! a throw-away spool that no queue runner reads.

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
        .map_err(|e| anyhow::anyhow!("policies: {e}"))?;
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
async fn terminal(pipe: tokio::io::DuplexStream) {
    let (mut from_relay, mut to_relay) = tokio::io::split(pipe);
    let replies = async {
        let _ = tokio::io::copy(&mut from_relay, &mut tokio::io::stdout()).await;
    };
    let typing = async {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let line = line.trim_end_matches('\r');
            if to_relay
                .write_all(format!("{line}\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = to_relay.shutdown().await;
    };
    tokio::join!(replies, typing);
}
