//! The clients postmasters and applications actually use: swaks and Python's smtplib,
//! both with STARTTLS.

use crate::support::{Relay, Sink};
use std::process::Command;

fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is needed by this test: apt-get install {tool}"
    );
}

#[tokio::test]
async fn swaks_sends_over_starttls() {
    require("swaks");
    let sink = Sink::start().await;
    let relay = Relay::start(sink.addr).await;
    let addr = relay.addr;
    let output = tokio::task::spawn_blocking(move || {
        Command::new("swaks")
            .args([
                "--server",
                &addr.to_string(),
                "--tls",
                "--helo",
                "swaks.test",
            ])
            .args(["--from", "app@example.edu", "--to", "a@example.org"])
            .args([
                "--header",
                "Subject: from swaks",
                "--body",
                "hello from swaks",
            ])
            .output()
            .expect("run swaks")
    })
    .await
    .unwrap();
    let transcript = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "swaks failed:\n{transcript}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        transcript.contains("250 2.0.0 Ok: queued as"),
        "{transcript}"
    );
    let received = sink.wait_for(1).await;
    let text = String::from_utf8_lossy(&received[0].data);
    assert!(
        text.contains("Subject: from swaks") && text.contains("with ESMTPS"),
        "{text}"
    );
}

#[tokio::test]
async fn python_smtplib_sends_over_starttls() {
    require("python3");
    let sink = Sink::start().await;
    let relay = Relay::start(sink.addr).await;
    crate::support::python(&format!(
        r#"
with smtplib.SMTP("127.0.0.1", {port}) as s:
    s.starttls(context=ctx)
    refused = s.sendmail("app@example.edu", ["a@example.org", "b@example.org"],
                         b"Subject: from python\r\n\r\nhello from smtplib\r\n")
    assert refused == {{}}, refused
"#,
        port = relay.addr.port()
    ))
    .await;
    let received = sink.wait_for(1).await;
    assert_eq!(received[0].recipients, ["a@example.org", "b@example.org"]);
    assert!(String::from_utf8_lossy(&received[0].data).contains("hello from smtplib"));
}
