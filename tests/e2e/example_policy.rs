//! The department policy in examples/phi-guard, built as a department would build it and
//! dropped into a running relay's chain: it refuses what it should through the real relay.

use crate::support::{Conn, Relay, Sink};

#[tokio::test]
async fn phi_guard_refuses_marked_mail_to_outside_addresses_and_passes_the_rest() {
    let sink = Sink::start().await;
    let relay = Relay::with_phi_guard(sink.addr).await;
    let send = |to: &'static str, subject: &'static str| {
        let addr = relay.addr;
        async move {
            let mut conn = Conn::greeted(addr).await;
            conn.envelope("ehr@med.example.edu", &[to]).await;
            conn.cmd("DATA", 354).await;
            conn.send(format!("Subject: {subject}\r\n\r\nresults\r\n.\r\n"))
                .await;
            conn.reply().await
        }
    };
    let refused = send("doctor@clinic.example.org", "[PHI] lab results").await;
    assert_eq!(refused.code, 550, "{}", refused.text());
    assert!(refused.text().contains("<doctor@clinic.example.org>"));
    assert_eq!(
        send("nurse@med.example.edu", "[PHI] lab results")
            .await
            .code,
        250
    );
    assert_eq!(send("doctor@clinic.example.org", "lunch").await.code, 250);
    let received = sink.wait_for(2).await;
    assert_eq!(received.len(), 2);
    // The log tells why the first was refused, tied to its queue id.
    let log = relay.wait_for_log("dept=reject").await;
    assert!(
        log.contains("policy: connect: dept=continue"),
        "the trace starts at connect (builtin:networks is asked at RCPT only): {log}"
    );
    assert!(
        log.contains("rcpt <doctor@clinic.example.org>: networks=accept"),
        "{log}"
    );
}
