//! The PROXY protocol (v1 and v2, HAProxy's): on a listener behind a TCP load balancer,
//! every connection starts with a header naming the real client, which the relay then
//! treats as the peer (for policies, limits, the log and Received).
//!
//! The header is read exactly, never a byte beyond it: what follows belongs to the SMTP
//! session. Parsing is proxy-header's.

use proxy_header::{ParseConfig, ProxyHeader};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

/// How long a load balancer may take to send the header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// v2's fixed signature (the first 12 of its 16 fixed bytes).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (the specification's 107 bytes).
const V1_MAX: usize = 107;
/// The longest v2 address block taken (TLVs included).
const V2_MAX: usize = 1024;

/// Reads the header: `Some((client, destination))` for a proxied connection, `None` for
/// the balancer's own (v2 LOCAL, v1 UNKNOWN: health checks), `Err` when there is none or
/// it is malformed.
pub async fn read_header(
    stream: &mut TcpStream,
) -> Result<Option<(SocketAddr, SocketAddr)>, String> {
    tokio::time::timeout(HEADER_TIMEOUT, read(stream))
        .await
        .map_err(|_| "no PROXY header in time".to_string())?
}

/// Reads and parses the header from any byte stream (a connection, or the fuzz targets'
/// bytes in memory).
pub(crate) async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<(SocketAddr, SocketAddr)>, String> {
    let io = |e: std::io::Error| format!("reading the PROXY header: {e}");
    // 15 bytes: the shortest v1 header ("PROXY UNKNOWN\r\n"), and less than v2's fixed 16.
    let mut header = vec![0u8; 15];
    stream.read_exact(&mut header).await.map_err(io)?;
    if header.starts_with(b"PROXY ") {
        // One line, ended by its first LF, which must close a CRLF. Reading on to a CRLF
        // past a bare LF would take the session's first bytes into the header, and
        // proxy-header ignores whatever follows `PROXY UNKNOWN` (found by the fuzz target).
        while !header.contains(&b'\n') {
            if header.len() >= V1_MAX {
                return Err("PROXY v1 header too long".into());
            }
            header.push(stream.read_u8().await.map_err(io)?);
        }
        if !header.ends_with(b"\r\n") {
            return Err("malformed PROXY v1 header (a bare LF)".into());
        }
    } else if header.starts_with(V2_SIGNATURE) {
        header.push(stream.read_u8().await.map_err(io)?);
        let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
        if length > V2_MAX {
            return Err(format!("PROXY v2 header of {length} bytes refused"));
        }
        let mut rest = vec![0u8; length];
        stream.read_exact(&mut rest).await.map_err(io)?;
        header.extend_from_slice(&rest);
    } else {
        return Err("the connection did not start with a PROXY header".into());
    }
    let config = ParseConfig {
        include_tlvs: false,
        ..ParseConfig::default()
    };
    match ProxyHeader::parse(&header, config) {
        Ok((parsed, used)) if used == header.len() => {
            Ok(parsed.proxied_address().map(|a| (a.source, a.destination)))
        }
        Ok(_) | Err(_) => Err("malformed PROXY header".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_v1_header_is_one_line_ended_by_its_first_crlf() {
        // The fuzz target's find, and the harm it could do: the SMTP session's first
        // command taken into an UNKNOWN header.
        for input in [
            &b"PROXY UNKNOWNTC Y \xef\xff\xff\xff\0\0\0\n\0\0\0\0\0\0\r\n"[..],
            b"PROXY UNKNOWN\nEHLO client.example\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n\r\n",
        ] {
            let mut rest = input;
            assert!(read(&mut rest).await.is_err(), "{input:?} was taken");
        }
        let mut rest = &b"PROXY UNKNOWN\r\nEHLO client.example\r\n"[..];
        assert_eq!(read(&mut rest).await, Ok(None));
        assert_eq!(rest, b"EHLO client.example\r\n");
        let mut rest = &b"PROXY TCP4 192.0.2.1 192.0.2.2 1 25\r\nEHLO x\r\n"[..];
        let client = "192.0.2.1:1".parse().ok();
        assert_eq!(read(&mut rest).await.map(|a| a.map(|(c, _)| c)), Ok(client));
        assert_eq!(rest, b"EHLO x\r\n");
    }
}
