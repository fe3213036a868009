//! The portal's socket: HTTPS with the relay's certificate, and plain HTTP only from
//! loopback or a trusted proxy (one that terminates TLS in front of the portal).
//!
//! Both arrive on the one port: a TLS client's first byte is a handshake record (0x16),
//! which no HTTP request begins with. Handshakes run in tasks of their own, under a time
//! limit, so one slow client never holds up the others' accepts.

use ipnet::IpNet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;

/// A handshake (or the first byte of a plain request) must arrive within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections being handshaken at once: a flood of half-open ones waits here rather
/// than in memory without bound.
const MAX_HANDSHAKES: usize = 256;
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

/// What accepts connections for axum: see the module's documentation.
pub struct Listener {
    local: SocketAddr,
    ready: mpsc::Receiver<(Connection, Peer)>,
}

impl Listener {
    /// Starts accepting on `socket`; `trusted` are the addresses allowed plain HTTP
    /// besides loopback.
    pub fn start(
        socket: TcpListener,
        tls: TlsAcceptor,
        trusted: Vec<IpNet>,
    ) -> io::Result<Listener> {
        let local = socket.local_addr()?;
        let (send, ready) = mpsc::channel(64);
        tokio::spawn(accept(socket, tls, Arc::new(trusted), send));
        Ok(Listener { local, ready })
    }
}

/// Whether `addr` may speak plain HTTP to the portal.
pub fn plain_allowed(addr: &SocketAddr, trusted: &[IpNet]) -> bool {
    let ip = addr.ip().to_canonical();
    ip.is_loopback() || trusted.iter().any(|n| n.contains(&ip))
}

async fn accept(
    socket: TcpListener,
    tls: TlsAcceptor,
    trusted: Arc<Vec<IpNet>>,
    ready: mpsc::Sender<(Connection, Peer)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
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
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (tls, trusted, ready) = (tls.clone(), trusted.clone(), ready.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let opened =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, open(stream, addr, &tls, &trusted));
            match opened.await {
                Ok(Ok(connection)) => {
                    let _ = ready.send(connection).await;
                }
                Ok(Err(e)) => {
                    tracing::info!(target: "sluice::web", peer = %addr, "portal: connection refused: {e}")
                }
                Err(_) => {
                    tracing::info!(target: "sluice::web", peer = %addr, "portal: no request within {HANDSHAKE_TIMEOUT:?}")
                }
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

impl axum::serve::Listener for Listener {
    type Io = Connection;
    type Addr = Peer;

    async fn accept(&mut self) -> (Connection, Peer) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accept task only ends with the process.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer {
            addr: self.local,
            tls: true,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Listener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Listener>) -> Peer {
        *stream.remote_addr()
    }
}
