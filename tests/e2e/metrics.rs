//! `[metrics] addr`: what Prometheus reads, checked by Prometheus's own tools — promtool on
//! the text, and a real Prometheus server scraping the relay.

use crate::support::relay::RelayOptions;
use crate::support::{PATIENCE, Relay, Sink, free_port, python};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A relay whose metrics are served on a free port, and that port.
async fn relay_with_metrics(sink: &Sink) -> (Relay, SocketAddr) {
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let relay = Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        extra: format!("[metrics]\naddr = \"{metrics}\"\n"),
        ..Default::default()
    })
    .await;
    (relay, metrics)
}

/// The body of `GET path` from `addr` (HTTP/1.0: the server closes when done).
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    body.to_string()
}

/// The value of the sample `name{labels}` (exactly as written) in the text format.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Sends `n` messages to two recipients each, and one refused recipient (not an
/// address), through Python's smtplib.
async fn send(relay: &Relay, n: usize) {
    python(&format!(
        "s = smtplib.SMTP('127.0.0.1', {port})\n\
         s.ehlo('app.example.edu')\n\
         code, _ = s.docmd('MAIL FROM:<app@example.edu>')\n\
         assert code == 250\n\
         code, _ = s.docmd('RCPT TO:<not an address>')\n\
         assert code >= 500, code\n\
         s.rset()\n\
         for i in range({n}):\n    \
             s.sendmail('app@example.edu', ['a@example.org', 'b@example.org'], 'Subject: %d\\r\\n\\r\\nhello\\r\\n' % i)\n\
         s.quit()\n",
        port = relay.addr.port()
    ))
    .await;
}

#[tokio::test]
async fn the_metrics_pass_promtool_and_count_what_the_relay_did() {
    let sink = Sink::start().await;
    let (relay, metrics) = relay_with_metrics(&sink).await;
    send(&relay, 3).await;
    sink.wait_for(3).await;
    relay.wait_for_queued(0).await;

    let text = get(metrics, "/metrics").await;
    let promtool =
        crate::support::run_with_input(Command::new("promtool").args(["check", "metrics"]), &text);
    assert!(
        promtool.status.success(),
        "promtool (apt-get install prometheus): {}{}\n{text}",
        String::from_utf8_lossy(&promtool.stdout),
        String::from_utf8_lossy(&promtool.stderr)
    );
    let listener = relay.addr.to_string();
    for (series, want) in [
        ("sluice_messages_accepted_total", 3.0),
        (
            r#"sluice_commands_refused_total{stage="rcpt",class="5xx"}"#,
            1.0,
        ),
        (r#"sluice_deliveries_total{status="sent",tls="none"}"#, 6.0),
        (
            r#"sluice_policy_decisions_total{module="networks",hook="rcpt",verdict="accept"}"#,
            6.0,
        ),
        (r#"sluice_queue_messages{state="deferred"}"#, 0.0),
        ("sluice_queue_oldest_message_age_seconds", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series}\n{text}");
    }
    // The test's own connection, and the one that found the relay listening.
    let sessions =
        format!(r#"sluice_connections_total{{listener="{listener}",outcome="session"}}"#);
    assert!(sample(&text, &sessions).unwrap() >= 1.0, "{text}");
    assert!(sample(&text, "sluice_accepted_bytes_total").unwrap() > 3.0 * 20.0);
    assert!(sample(&text, "sluice_spool_sync_duration_seconds_count").unwrap() >= 1.0);
}

/// A Prometheus server on a free port, storing under a temporary directory; stopped
/// when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn scraping(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n\
                 scrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run prometheus (apt-get install prometheus)");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The value of an instant query's single result, once there is one.
    async fn query(&self, query: &str) -> Option<f64> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
                b => format!("%{b:02X}"),
            })
            .collect();
        let path = format!("/api/v1/query?query={encoded}");
        let Ok(mut stream) = tokio::net::TcpStream::connect(self.addr).await else {
            return None;
        };
        let request = format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let (_, body) = response.split_once("\r\n\r\n")?;
        let json: serde_json::Value = serde_json::from_str(body).ok()?;
        json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `query` gives `want`.
    async fn wait_for(&self, query: &str, want: f64) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let got = self.query(query).await;
            if got == Some(want) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus says {query} = {got:?}, not {want}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_relay_and_sees_the_accepted_count_rise() {
    let sink = Sink::start().await;
    let (relay, metrics) = relay_with_metrics(&sink).await;
    let prometheus = Prometheus::scraping(metrics);
    // Scraped, and healthy: the target is up before any mail.
    prometheus.wait_for("up", 1.0).await;
    prometheus
        .wait_for("sluice_messages_accepted_total", 0.0)
        .await;

    send(&relay, 2).await;
    prometheus
        .wait_for("sluice_messages_accepted_total", 2.0)
        .await;
    sink.wait_for(2).await;
    prometheus
        .wait_for("sum(sluice_deliveries_total{status=\"sent\"})", 4.0)
        .await;
}
