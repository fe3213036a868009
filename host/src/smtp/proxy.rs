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
        while !header.ends_with(b"\r\n") {
            if header.len() >= V1_MAX {
                return Err("PROXY v1 header too long".into());
            }
            header.push(stream.read_u8().await.map_err(io)?);
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
