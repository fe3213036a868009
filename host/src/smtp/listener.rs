//! Accepting SMTP connections, within the limits on connections in all, per listener and
//! per client (an IPv4 address, or an IPv6 /64: one host's share of a network).

use super::ServerContext;
use super::proxy;
use super::session::Session;
use super::stream::Stream;
use crate::config::{ListenerConfig, ListenerKind};
use crate::metrics::metrics;
use crate::policy::SessionFacts;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Open connections per client; a [`PeerSlot`] gives its place back when dropped.
#[derive(Default)]
struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in the per-client count.
pub struct PeerSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

/// The client a connection is counted against: an IPv4 address as it is; an IPv6 address
/// by its /64, since one host is routinely given a whole /64 and can use any address in it.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
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
        let ip = client_key(ip);
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
pub async fn bind(
    listeners: &[ListenerConfig],
) -> anyhow::Result<Vec<(TcpListener, ListenerConfig)>> {
    let mut bound = Vec::new();
    for l in listeners {
        let socket = TcpListener::bind(l.addr)
            .await
            .map_err(|e| anyhow::anyhow!("listener {}: cannot listen: {e}", l.addr))?;
        tracing::info!(
            name = %l.name(),
            kind = l.kind.as_str(),
            proxy_protocol = l.proxy_protocol,
            "listening on {}",
            socket.local_addr()?
        );
        bound.push((socket, l.clone()));
    }
    Ok(bound)
}

/// Accepts connections on every listener until the relay stops (`ctx.shutdown`), then
/// returns once every session has ended.
pub async fn serve(ctx: Arc<ServerContext>, listeners: Vec<(TcpListener, ListenerConfig)>) {
    // The listeners and the relay's connection limit are fixed until a restart.
    let config = ctx.config.load_full();
    let max = config.limits.max_connections;
    let total = Arc::new(Semaphore::new(max));
    let per_ip = Arc::new(PerIp::default());
    let mut tasks = tokio::task::JoinSet::new();
    for (listener, listener_config) in listeners {
        // Each listener's own places, taken with one of the relay's: a busy listener
        // cannot fill the others' share.
        let own = Arc::new(Semaphore::new(
            listener_config.connection_limit(&config.limits),
        ));
        tasks.spawn(accept_loop(
            ctx.clone(),
            listener,
            Arc::new(listener_config),
            [total.clone(), own],
            per_ip.clone(),
        ));
    }
    while tasks.join_next().await.is_some() {}
    // Every session holds one of the relay's places: all of them back, all have ended.
    let _ = total
        .acquire_many(u32::try_from(max).unwrap_or(u32::MAX))
        .await;
}

async fn accept_loop(
    ctx: Arc<ServerContext>,
    listener: TcpListener,
    config: Arc<ListenerConfig>,
    [total, own]: [Arc<Semaphore>; 2],
    per_ip: Arc<PerIp>,
) {
    let name: Arc<str> = Arc::from(config.name());
    let mut backoff = Duration::from_millis(10);
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = super::shutting_down(&mut shutdown) => {
                tracing::info!(listener = &*name, "no longer listening: the relay is shutting down");
                return;
            }
        };
        let (stream, peer) = match accepted {
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
        let Ok(listener_permit) = own.clone().try_acquire_owned() else {
            tracing::warn!(%peer, listener = &*name, "connection refused: the listener's max_connections reached");
            metrics().connection(&name, "over_limit");
            refuse(
                stream,
                "421 4.7.0 Too many connections, try again later\r\n",
            );
            continue;
        };
        let Ok(permit) = total.clone().try_acquire_owned() else {
            tracing::warn!(%peer, listener = &*name, "connection refused: limits.max_connections reached");
            metrics().connection(&name, "over_limit");
            refuse(
                stream,
                "421 4.7.0 Too many connections, try again later\r\n",
            );
            continue;
        };
        let (ctx, config, name, per_ip) =
            (ctx.clone(), config.clone(), name.clone(), per_ip.clone());
        tokio::spawn(async move {
            let _permits = (permit, listener_permit);
            start(ctx, stream, &config, &name, &per_ip).await;
        });
    }
}

/// Everything between accepting a connection and the SMTP session: the PROXY header, the
/// per-client limit (on the real client, behind a balancer), implicit TLS.
async fn start(
    ctx: Arc<ServerContext>,
    mut stream: TcpStream,
    config: &ListenerConfig,
    name: &Arc<str>,
    per_ip: &Arc<PerIp>,
) {
    let refused = |outcome| metrics().connection(name, outcome);
    let _ = stream.set_nodelay(true);
    let mut facts = match Session::facts_for(&stream, name) {
        Ok(facts) => facts,
        Err(e) => return tracing::warn!(error = %e, "cannot start session"),
    };
    if config.proxy_protocol {
        let balancer = facts.peer;
        if !config
            .proxy_from
            .iter()
            .any(|n| n.contains(&balancer.ip().to_canonical()))
        {
            refused("proxy_refused");
            return tracing::warn!(peer = %balancer, listener = &**name, "connection refused: not a load balancer named in proxy_from");
        }
        match proxy::read_header(&mut stream).await {
            Ok(Some((client, destination))) => {
                facts = SessionFacts::new(client, destination, name);
                tracing::debug!(%balancer, %client, "PROXY header");
            }
            // The balancer's own connection (a health check): it is the client.
            Ok(None) => {}
            Err(e) => {
                refused("proxy_refused");
                return tracing::warn!(peer = %balancer, listener = &**name, "connection refused: {e}");
            }
        }
    }
    let peer = facts.peer;
    let per_ip_limit = ctx.config.load().limits.max_connections_per_ip;
    let Some(_slot) = per_ip.try_take(peer.ip(), per_ip_limit) else {
        tracing::warn!(%peer, "connection refused: limits.max_connections_per_ip reached (an IPv6 /64 counts as one client)");
        refused("over_limit");
        refuse(
            stream,
            "421 4.7.0 Too many connections from your address, try again later\r\n",
        );
        return;
    };
    let stream = if config.kind == ListenerKind::Smtps {
        let handshake = ctx.tls.accept(stream);
        match tokio::time::timeout(super::TLS_HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(tls)) => {
                let stream = Stream::Tls(Box::new(tls));
                facts.tls = stream.tls_info();
                stream
            }
            Ok(Err(e)) => {
                refused("tls_failed");
                return tracing::info!(%peer, "disconnect: TLS handshake failed: {e}");
            }
            Err(_) => {
                refused("tls_failed");
                return tracing::info!(%peer, "disconnect: TLS handshake timed out");
            }
        }
    } else {
        Stream::Plain(stream)
    };
    metrics().connection(name, "session");
    Session::new(ctx, stream, facts)
        .on_listener(config.kind)
        .run()
        .await;
}

/// Answers a connection over the limits and closes it, without holding up the accept loop.
fn refuse(mut stream: TcpStream, reply: &'static str) {
    tokio::spawn(async move {
        let _ =
            tokio::time::timeout(Duration::from_secs(5), stream.write_all(reply.as_bytes())).await;
        let _ = stream.shutdown().await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_64_is_one_client_and_ipv4_addresses_are_not_grouped() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(other));
        let (x, y): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        assert_ne!(client_key(x), client_key(y));
        // A v4-mapped address is the IPv4 client it maps.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(client_key(mapped), x);
    }

    #[test]
    fn a_64_runs_out_of_places_together() {
        let per_ip = Arc::new(PerIp::default());
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        let first = per_ip.try_take(a, 1);
        assert!(first.is_some());
        assert!(per_ip.try_take(b, 1).is_none());
        drop(first);
        assert!(per_ip.try_take(b, 1).is_some());
    }
}
