//! Accepting SMTP connections, within the limits on connections in all and per client IP.

use super::ServerContext;
use super::session::Session;
use super::stream::Stream;
use crate::config::ListenerConfig;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Open connections per client IP; a [`PeerSlot`] gives its place back when dropped.
#[derive(Default)]
struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in the per-IP count.
pub struct PeerSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.per_ip.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl PerIp {
    fn try_take(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<PeerSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            per_ip: self.clone(),
            ip,
        })
    }
}

/// Binds every configured listener; an address that cannot be bound is an error at start-up.
pub async fn bind(listeners: &[ListenerConfig]) -> anyhow::Result<Vec<(TcpListener, String)>> {
    let mut bound = Vec::new();
    for l in listeners {
        let socket = TcpListener::bind(l.addr)
            .await
            .map_err(|e| anyhow::anyhow!("listener {}: cannot listen: {e}", l.addr))?;
        tracing::info!("listening on {}", socket.local_addr()?);
        bound.push((socket, l.name()));
    }
    Ok(bound)
}

/// Accepts connections on every listener until the process ends.
pub async fn serve(ctx: Arc<ServerContext>, listeners: Vec<(TcpListener, String)>) {
    let total = Arc::new(Semaphore::new(ctx.config.limits.max_connections));
    let per_ip = Arc::new(PerIp::default());
    let mut tasks = tokio::task::JoinSet::new();
    for (listener, name) in listeners {
        tasks.spawn(accept_loop(
            ctx.clone(),
            listener,
            Arc::<str>::from(name),
            total.clone(),
            per_ip.clone(),
        ));
    }
    while tasks.join_next().await.is_some() {}
}

async fn accept_loop(
    ctx: Arc<ServerContext>,
    listener: TcpListener,
    name: Arc<str>,
    total: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = Duration::from_millis(10);
                accepted
            }
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::error!(listener = &*name, error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let ip = peer.ip().to_canonical();
        let Ok(permit) = total.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: limits.max_connections reached");
            refuse(
                stream,
                "421 4.7.0 Too many connections, try again later\r\n",
            );
            continue;
        };
        let Some(slot) = per_ip.try_take(ip, ctx.config.limits.max_connections_per_ip) else {
            tracing::warn!(%peer, "connection refused: limits.max_connections_per_ip reached");
            refuse(
                stream,
                "421 4.7.0 Too many connections from your address, try again later\r\n",
            );
            continue;
        };
        let ctx = ctx.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _slot = slot;
            let _ = stream.set_nodelay(true);
            match Session::facts_for(&stream, &name) {
                Ok(facts) => Session::new(ctx, Stream::Plain(stream), facts).run().await,
                Err(e) => tracing::warn!(%peer, error = %e, "cannot start session"),
            }
        });
    }
}

/// Answers a connection over the limits and closes it, without holding up the accept loop.
fn refuse(mut stream: TcpStream, reply: &'static str) {
    tokio::spawn(async move {
        let _ =
            tokio::time::timeout(Duration::from_secs(5), stream.write_all(reply.as_bytes())).await;
        let _ = stream.shutdown().await;
    });
}
