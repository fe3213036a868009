//! The portal's socket: HTTPS with the relay's certificate, and plain HTTP only from
//! loopback or a trusted proxy (one that terminates TLS in front of the portal).
//!
//! Both arrive on the one port: a TLS client's first byte is a handshake record (0x16),
//! which no HTTP request begins with. Each connection runs in a task of its own, so one
//! slow client never holds up the others' accepts, under limits on everything a client
//! controls: connections open at once (past it, a new one is closed at once), the time to
//! the first byte and the handshake, the time to send a request's header, and a
//! connection's whole life.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use ipnet::IpNet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// A handshake (or the first byte of a plain request) must arrive within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's header must arrive within this (hyper's header read timeout, which also
/// ends a kept-alive connection that sends nothing more).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a connection stays open, however busy: a browser opens another.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// Connections open at once: a portal for people needs a few dozen; a flood beyond this
/// is closed on arrival rather than held in memory, and the relay's file descriptors
/// stay with its SMTP listeners.
const MAX_CONNECTIONS: usize = 512;
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// A connection to the portal, encrypted or (from loopback or a trusted proxy) not: the
/// SMTP listener's stream type, which is just that (its other states are never made here).
pub type Connection = crate::smtp::stream::Stream;

/// Who is at the other end, as the portal's handlers see it.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Whether the connection itself is encrypted (a trusted proxy may have decrypted it).
    pub tls: bool,
}

/// Whether `addr` may speak plain HTTP to the portal.
pub fn plain_allowed(addr: &SocketAddr, trusted: &[IpNet]) -> bool {
    let ip = addr.ip().to_canonical();
    ip.is_loopback() || trusted.iter().any(|n| n.contains(&ip))
}

/// Serves `app` on `socket` until the process ends; `trusted` are the addresses allowed
/// plain HTTP besides loopback.
pub async fn serve(socket: TcpListener, tls: TlsAcceptor, trusted: Vec<IpNet>, app: Router) {
    let trusted = Arc::new(trusted);
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, addr) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin.
                tracing::warn!(target: "sluice::web", "portal: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(target: "sluice::web", peer = %addr, "portal: connection closed: {MAX_CONNECTIONS} open already");
            continue;
        };
        let (tls, trusted, app) = (tls.clone(), trusted.clone(), app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let opened =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, open(stream, addr, &tls, &trusted));
            let (connection, peer) = match opened.await {
                Ok(Ok(opened)) => opened,
                Ok(Err(e)) => {
                    return tracing::info!(target: "sluice::web", peer = %addr, "portal: connection refused: {e}");
                }
                Err(_) => {
                    return tracing::info!(target: "sluice::web", peer = %addr, "portal: no request within {HANDSHAKE_TIMEOUT:?}");
                }
            };
            // Every request on the connection knows its peer (`ConnectInfo<Peer>`).
            let app = app.layer(axum::Extension(ConnectInfo(peer)));
            let serving = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(connection), TowerToHyperService::new(app));
            if tokio::time::timeout(CONNECTION_LIFETIME, serving)
                .await
                .is_err()
            {
                tracing::debug!(target: "sluice::web", peer = %addr, "portal: connection closed after {CONNECTION_LIFETIME:?}");
            }
        });
    }
}

async fn open(
    stream: TcpStream,
    addr: SocketAddr,
    tls: &TlsAcceptor,
    trusted: &[IpNet],
) -> io::Result<(Connection, Peer)> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed at once",
        ));
    }
    if first[0] == TLS_HANDSHAKE {
        let stream = tls.accept(stream).await?;
        return Ok((Connection::Tls(Box::new(stream)), Peer { addr, tls: true }));
    }
    if !plain_allowed(&addr, trusted) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "plain HTTP from an address that is neither loopback nor in web.trusted_proxies (use https)",
        ));
    }
    Ok((Connection::Plain(stream), Peer { addr, tls: false }))
}
