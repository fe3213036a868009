//! `GET /metrics` on `[metrics] addr`: the relay's metrics for Prometheus, with the queue
//! and registry gauges read at that moment.

use super::{Metrics, metrics};
use crate::queue::{self, Spool, State};
use crate::registry::Table;
use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State as Extract;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Where the gauges are read from when Prometheus scrapes.
pub struct Sources {
    pub spool: Arc<Spool>,
    pub registry: Option<Arc<ArcSwap<Table>>>,
    /// One census of the queue at a time: two scrapers at once share the spool's reads.
    pub census: tokio::sync::Mutex<()>,
}

/// Binds `[metrics] addr`; an address that cannot be bound is an error at start-up.
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics.addr {addr}: cannot listen: {e}"))?;
    tracing::info!("metrics on http://{}/metrics", socket.local_addr()?);
    Ok(socket)
}

/// Serves `/metrics` until the process ends.
pub async fn serve(listener: TcpListener, sources: Arc<Sources>) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(sources);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the metrics endpoint stopped");
    }
}

async fn scrape(Extract(sources): Extract<Arc<Sources>>, headers: HeaderMap) -> Response {
    let m = metrics();
    {
        let _one_at_a_time = sources.census.lock().await;
        let spool = sources.spool.clone();
        // Reading every envelope is file I/O: off the async workers. A queue of ten
        // thousand messages takes tens of milliseconds, once per scrape.
        match tokio::task::spawn_blocking(move || census(&spool)).await {
            Ok(Ok(census)) => set_queue(m, &census),
            Ok(Err(e)) => tracing::warn!(error = %e, "metrics: cannot read the queue"),
            Err(e) => tracing::warn!(error = %e, "metrics: the queue census failed"),
        }
    }
    if let Some(table) = &sources.registry {
        let table = table.load();
        Metrics::set_state(
            &m.registry_entries,
            "registered",
            table.registrations().len(),
        );
        Metrics::set_state(&m.registry_entries, "blocked", table.blocks().len());
    }
    // Prometheus asks for OpenMetrics first; anyone else gets the classic text format.
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        m.encode(openmetrics),
    )
        .into_response()
}

/// How many messages are in each state, and when the oldest was received.
struct Census {
    counts: [usize; State::ALL.len()],
    oldest: Option<u64>,
}

fn census(spool: &Spool) -> std::io::Result<Census> {
    let mut census = Census {
        counts: [0; State::ALL.len()],
        oldest: None,
    };
    for id in spool.list()? {
        // Delivered or deleted since it was listed.
        let Ok(envelope) = spool.envelope(&id) else {
            continue;
        };
        census.counts[State::of(&envelope) as usize] += 1;
        census.oldest = Some(
            census
                .oldest
                .map_or(envelope.received, |o| o.min(envelope.received)),
        );
    }
    Ok(census)
}

fn set_queue(m: &Metrics, census: &Census) {
    for state in State::ALL {
        Metrics::set_state(
            &m.queue_messages,
            state.as_str(),
            census.counts[state as usize],
        );
    }
    let age = census
        .oldest
        .map_or(0, |received| queue::now().saturating_sub(received));
    m.queue_oldest_seconds
        .set(i64::try_from(age).unwrap_or(i64::MAX));
}
