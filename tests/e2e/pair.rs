//! A relay pair: two nodes sharing their policy counters in a real Redis (`[counters]
//! url`), so a rate limit holds across both; what each `on_unavailable` does while Redis
//! is down, and after it is back; and both nodes behind a real HAProxy speaking PROXY v2
//! (`dist/haproxy/haproxy.cfg`), seeing each client's own address. Two nodes sharing
//! their registry in a real PostgreSQL (`[store] url`): a change through either is in
//! force on both, and while PostgreSQL is down each decides by the table it has.

use crate::support::redis::Redis;
use crate::support::relay::RelayOptions;
use crate::support::{Conn, PATIENCE, Relay, Sink, free_port};
use sluice::postgres_testing::Server as Postgres;
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// rate-limit: three messages a client an hour.
const RATE_LIMIT: &str = r#"
[[policy]]
name = "rate-limit"
module = "builtin:rate-limit"
[policy.config]
max_messages = 3
max_recipients = 100
"#;

/// rate-limit, then networks.
fn limited() -> String {
    format!("{RATE_LIMIT}\n[[policy]]\nname = \"networks\"\nmodule = \"builtin:networks\"\n")
}

async fn node(sink: &Sink, redis: &Redis, on_unavailable: &str) -> Relay {
    Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        policies: Some(limited()),
        extra: format!(
            "[counters]\nurl = \"{}\"\non_unavailable = \"{on_unavailable}\"\ntimeout = \"20ms\"\n",
            redis.url()
        ),
        ..Default::default()
    })
    .await
}

/// One message through `node`: the reply to MAIL, then (if accepted) to the end of DATA.
async fn send(node: SocketAddr) -> Vec<u16> {
    send_from("127.0.0.1".parse().unwrap(), node, "someone@example.org").await
}

/// One message from `source` through `to` for `rcpt`: the replies to MAIL, RCPT and the
/// end of DATA, as far as it got.
async fn send_from(source: IpAddr, to: SocketAddr, rcpt: &str) -> Vec<u16> {
    let mut conn = Conn::connect_from(source, to).await;
    conn.expect(220).await;
    conn.cmd("EHLO app.example.edu", 250).await;
    conn.send("MAIL FROM:<app@example.edu>\r\n").await;
    let mail = conn.reply().await.code;
    if mail != 250 {
        return vec![mail];
    }
    conn.send(format!("RCPT TO:<{rcpt}>\r\n")).await;
    let accepted = conn.reply().await.code;
    if accepted != 250 {
        return vec![mail, accepted];
    }
    conn.cmd("DATA", 354).await;
    conn.send("Subject: x\r\n\r\ny\r\n.\r\n").await;
    vec![mail, accepted, conn.reply().await.code]
}

#[tokio::test]
async fn the_rate_limit_holds_across_both_nodes() {
    let sink = Sink::start().await;
    let redis = Redis::start().await;
    let a = node(&sink, &redis, "local").await;
    let b = node(&sink, &redis, "local").await;
    assert_eq!(send(a.addr).await, [250, 250, 250]);
    assert_eq!(send(b.addr).await, [250, 250, 250]);
    assert_eq!(send(a.addr).await, [250, 250, 250]);
    // The fourth, whichever node it reaches.
    assert_eq!(send(b.addr).await, [451]);
    assert_eq!(send(a.addr).await, [451]);
    b.wait_for_log("count=3 limit=3 rate limit exceeded").await;
    assert_eq!(sink.wait_for(3).await.len(), 3);
}

#[tokio::test]
async fn without_redis_local_counts_per_node_and_shares_again_when_it_is_back() {
    let sink = Sink::start().await;
    let mut redis = Redis::start().await;
    let a = node(&sink, &redis, "local").await;
    assert_eq!(send(a.addr).await, [250, 250, 250]);
    redis.stop();
    // Counted in the node's memory, which starts empty: three more go through.
    for _ in 0..3 {
        assert_eq!(send(a.addr).await, [250, 250, 250]);
    }
    assert_eq!(send(a.addr).await, [451]);
    a.wait_for_log("counters: Redis is unavailable").await;
    let status = a.command(&["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("UNAVAILABLE since") && status.contains("counting in this node's memory"),
        "{status}"
    );

    // Back (and empty): counted there again.
    redis.restart().await;
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    while !a.log().contains("counters: Redis is back") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never counted in Redis again"
        );
        // Each try is one count in Redis (or, until the node reconnects, in memory).
        send(a.addr).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let status = a.command(&["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains(&format!("counters: {} (up)", redis.url())),
        "{status}"
    );
}

#[tokio::test]
async fn without_redis_tempfail_refuses_what_would_be_counted_until_it_is_back() {
    let sink = Sink::start().await;
    let mut redis = Redis::start().await;
    let a = node(&sink, &redis, "tempfail").await;
    assert_eq!(send(a.addr).await, [250, 250, 250]);
    redis.stop();
    let mut conn = Conn::greeted(a.addr).await;
    conn.cmd("EHLO app.example.edu", 250).await;
    let refused = conn.cmd("MAIL FROM:<app@example.edu>", 451).await;
    assert!(refused.contains("4.3.2"), "{refused}");
    a.wait_for_log("the shared counters (Redis) are unavailable")
        .await;

    redis.restart().await;
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    loop {
        if send(a.addr).await == [250, 250, 250] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still refused after Redis came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(sink.wait_for(2).await.len(), 2);
}

/// HAProxy running `dist/haproxy/haproxy.cfg`, its addresses replaced by the test's.
struct Haproxy {
    front: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    async fn start(a: SocketAddr, b: SocketAddr) -> Haproxy {
        let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/haproxy/haproxy.cfg");
        let front = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = std::fs::read_to_string(shipped)
            .unwrap()
            .replace("10.0.0.10:25", &front.to_string())
            .replace("10.0.0.11:25", &a.to_string())
            .replace("10.0.0.12:25", &b.to_string());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output();
        let check = check.expect("haproxy (apt-get install haproxy)");
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stdout)
        );
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(front).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "haproxy did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Haproxy {
            front,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node with a listener behind the balancer (PROXY v2 from 127.0.0.1 only), counting in
/// `redis`, its registry in `postgres`.
async fn campus_node(sink: &Sink, redis: &Redis, postgres: &Postgres) -> (Relay, SocketAddr) {
    let relay = Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        // rate-limit, then campus-access (the campus is 127.0.0.0/16; registered machines
        // relay anywhere, others only inside).
        policies: Some(format!("{RATE_LIMIT}\n{}", crate::registry::CAMPUS_CHAIN)),
        extra: format!(
            "[[listener]]\naddr = \"127.0.0.1:0\"\nname = \"behind-balancer\"\n\
             proxy_protocol = true\nproxy_from = [\"127.0.0.1/32\"]\n\
             [counters]\nurl = \"{}\"\ntimeout = \"20ms\"\n[store]\nurl = \"{}\"\n",
            redis.url(),
            postgres.url()
        ),
        ..Default::default()
    })
    .await;
    let behind = relay.listening("behind-balancer");
    (relay, behind)
}

#[tokio::test]
async fn behind_haproxy_both_nodes_see_the_client_and_share_its_limit() {
    let postgres = Postgres::start();
    let sink = Sink::start().await;
    let redis = Redis::start().await;
    let (a, a_behind) = campus_node(&sink, &redis, &postgres).await;
    let (b, b_behind) = campus_node(&sink, &redis, &postgres).await;
    // Registered once, through A: both nodes relay for it (one registry, in PostgreSQL; B
    // is told by the database).
    register(&a, "127.0.3.7");
    b.wait_for_log("registrations=1").await;
    let haproxy = Haproxy::start(a_behind, b_behind).await;
    let printer: IpAddr = "127.0.3.7".parse().unwrap();
    let stranger: IpAddr = "127.0.3.8".parse().unwrap();

    // The registry decides by the client's address, which only the PROXY header carries
    // (every connection reaches the nodes from 127.0.0.1, on campus but unregistered).
    let outside = "someone@gmail.com";
    assert_eq!(
        send_from(stranger, haproxy.front, outside).await,
        [250, 550]
    );
    assert_eq!(
        send_from(printer, haproxy.front, outside).await,
        [250, 250, 250]
    );
    assert_eq!(
        send_from(printer, haproxy.front, outside).await,
        [250, 250, 250]
    );
    // The limit holds across the nodes: the printer's fourth message, whichever node.
    assert_eq!(
        send_from(printer, haproxy.front, outside).await,
        [250, 250, 250]
    );
    assert_eq!(send_from(printer, haproxy.front, outside).await, [451]);
    assert_eq!(send_from(printer, haproxy.front, outside).await, [451]);
    // Round robin: each node had some of them, and each saw the client itself.
    for node in [&a, &b] {
        node.wait_for_log("peer=127.0.3.7:").await;
    }
    // Three for outside, and the registration's confirmation (sent by one node).
    let arrived = sink.wait_for(4).await;
    let relayed: Vec<_> = arrived
        .iter()
        .filter(|m| m.recipients == [outside])
        .collect();
    assert_eq!(relayed.len(), 3);
    for message in relayed {
        let text = String::from_utf8_lossy(&message.data);
        let received = text.lines().find(|l| l.starts_with("Received:")).unwrap();
        assert!(received.contains("[127.0.3.7]"), "{received}");
    }
}

/// A node with a submission listener, AUTH failures counted in `redis`, and the user jdoe.
async fn submission_node(sink: &Sink, redis: &Redis) -> (Relay, SocketAddr) {
    let relay = Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        extra: format!(
            "[[listener]]\naddr = \"127.0.0.1:0\"\nkind = \"submission\"\n\
             [auth]\nmax_failures = 3\nfailure_delay = \"10ms\"\n\
             [counters]\nurl = \"{}\"\ntimeout = \"20ms\"\n",
            redis.url()
        ),
        ..Default::default()
    })
    .await;
    let added = relay.command_with_input(&["user", "add", "jdoe"], "correct horse\n");
    assert!(added.status.success(), "{added:?}");
    let submission = relay.listening("submission");
    (relay, submission)
}

/// One AUTH PLAIN attempt from 127.0.7.7 at each `(node, password)`: what each got.
async fn logins(attempts: &[(SocketAddr, &str)]) -> Vec<String> {
    let attempts: Vec<String> = attempts
        .iter()
        .map(|(node, password)| {
            format!(
                "(({:?}, {}), {password:?})",
                node.ip().to_string(),
                node.port()
            )
        })
        .collect();
    let said = crate::support::python(&format!(
        "for addr, password in [{}]:\n\
         \x20   s = smtplib.SMTP(*addr, source_address=('127.0.7.7', 0))\n\
         \x20   s.starttls(context=ctx)\n\
         \x20   s.ehlo()\n\
         \x20   s.esmtp_features['auth'] = 'PLAIN'\n\
         \x20   try:\n\
         \x20       print(s.login('jdoe', password)[0])\n\
         \x20   except smtplib.SMTPAuthenticationError as e:\n\
         \x20       print(e.smtp_code)\n",
        attempts.join(", ")
    ))
    .await;
    said.lines().map(str::to_string).collect()
}

#[tokio::test]
async fn an_auth_lockout_holds_across_both_nodes() {
    let sink = Sink::start().await;
    let redis = Redis::start().await;
    let (_a, a) = submission_node(&sink, &redis).await;
    let (_b, b) = submission_node(&sink, &redis).await;
    // Three guesses, spread over the nodes; then even the right password is refused at
    // either node, from that address.
    let said = logins(&[
        (a, "guess 1"),
        (b, "guess 2"),
        (a, "guess 3"),
        (b, "correct horse"),
        (a, "correct horse"),
    ])
    .await;
    assert_eq!(said, ["535", "535", "535", "454", "454"]);
}

/// A node keeping its registry in `postgres` (`[store] url`), with the campus chain. Its
/// own round of book-keeping waits an hour: what it learns of another node's change, it
/// learns from the database's announcement.
async fn shared_store_node(sink: &Sink, postgres: &Postgres) -> Relay {
    Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        policies: Some(crate::registry::CAMPUS_CHAIN.into()),
        extra: format!(
            "[store]\nurl = \"{}\"\n[registry]\ncheck_interval = \"1h\"\n",
            postgres.url()
        ),
        ..Default::default()
    })
    .await
}

/// `sluice registry ARGS` through `node`'s configuration; panics unless it succeeds.
fn registry(node: &Relay, args: &[&str]) -> String {
    let out = node.command(&[&["registry"], args].concat());
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn register(node: &Relay, address: &str) {
    registry(
        node,
        &[
            "add",
            address,
            "--admin",
            "jdoe",
            "--contact",
            "jdoe@example.edu",
            "--dept",
            "Physics",
            "--purpose",
            "copier",
        ],
    );
}

/// The greeting `source` gets from `node`.
async fn greeting(source: IpAddr, node: SocketAddr) -> u16 {
    Conn::connect_from(source, node).await.reply().await.code
}

/// Waits until `check` holds, returning how long it took; panics after [`PATIENCE`].
async fn until<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) -> Duration {
    let started = tokio::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < PATIENCE, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn a_change_made_through_either_node_is_in_force_on_both() {
    let postgres = Postgres::start();
    let sink = Sink::start().await;
    let a = shared_store_node(&sink, &postgres).await;
    let b = shared_store_node(&sink, &postgres).await;
    let printer: IpAddr = "127.0.3.7".parse().unwrap();
    let outside = "someone@gmail.com";
    assert_eq!(send_from(printer, b.addr, outside).await, [250, 550]);

    // Registered through A: B relays for it, told by the database, not by its own round.
    register(&a, "127.0.3.7");
    let took = until("B relays for the printer registered through A", || async {
        send_from(printer, b.addr, outside).await == [250, 250, 250]
    })
    .await;
    eprintln!("a registration through A reached B in {took:?}");

    // Blocked through B: A refuses it from the greeting on.
    registry(&b, &["block", "127.0.3.7", "--reason", "sent phishing"]);
    let took = until("A refuses the printer blocked through B", || async {
        greeting(printer, a.addr).await == 554
    })
    .await;
    eprintln!("a block through B reached A in {took:?}");
    // Both nodes read one registry, and one history.
    let listed = registry(&a, &["list"]);
    assert!(listed.contains("sent phishing"), "{listed}");
    let history = registry(&b, &["history", "127.0.3.7"]);
    assert!(
        history.contains("register") && history.contains("block"),
        "{history}"
    );
    // The registration's confirmation was sent once, by one node.
    let arrived = sink.wait_for(2).await;
    let confirmations = arrived
        .iter()
        .filter(|m| m.recipients == ["jdoe@example.edu"])
        .count();
    assert_eq!(confirmations, 1);
}

#[tokio::test]
async fn while_postgres_is_down_the_nodes_relay_by_their_table_and_catch_up_after() {
    let postgres = Postgres::start();
    let sink = Sink::start().await;
    let a = shared_store_node(&sink, &postgres).await;
    let b = shared_store_node(&sink, &postgres).await;
    let printer: IpAddr = "127.0.3.7".parse().unwrap();
    let scanner: IpAddr = "127.0.3.8".parse().unwrap();
    let outside = "someone@gmail.com";
    register(&b, "127.0.3.7");
    until("A relays for the printer", || async {
        send_from(printer, a.addr, outside).await == [250, 250, 250]
    })
    .await;

    postgres.stop();
    a.wait_for_log("cannot be reached").await;
    // Decided by the table in memory: the registered printer relays, the scanner does not.
    assert_eq!(send_from(printer, a.addr, outside).await, [250, 250, 250]);
    assert_eq!(send_from(scanner, a.addr, outside).await, [250, 550]);
    let status = a.command(&["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("UNAVAILABLE since") && status.contains("deciding by the registry"),
        "{status}"
    );
    // A change cannot be made meanwhile, and says so.
    let refused = b.command(&["registry", "block", "127.0.3.7", "--reason", "x"]);
    assert!(!refused.status.success());

    postgres.start_again();
    a.wait_for_log("reached again").await;
    let status = a.command(&["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("(up)"), "{status}");
    // A change made after the restart, through the other node, arrives.
    register(&b, "127.0.3.8");
    until(
        "A relays for the scanner registered after the restart",
        || async { send_from(scanner, a.addr, outside).await == [250, 250, 250] },
    )
    .await;
}
