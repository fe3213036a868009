//! A small HTTP/1.1 client for the portal's tests: one request per connection, cookies
//! kept as a browser keeps them for one site, no redirects followed (the tests look at
//! them). Written here because the tests need to see and set exactly what goes over the
//! wire (cookies, the CSRF field, the client's source address), which a full client hides.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// A response: status, headers (names in lower case, in order) and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every `Set-Cookie`.
    pub fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == "set-cookie")
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Where a redirect goes.
    pub fn location(&self) -> Option<&str> {
        self.header("location")
    }
}

/// One visitor of the portal: its cookies, and the address it connects from.
pub struct Browser {
    pub portal: SocketAddr,
    pub cookies: BTreeMap<String, String>,
    /// The source address (a 127.x address), or any.
    pub from: Option<IpAddr>,
}

/// `application/x-www-form-urlencoded` for one value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Browser {
    pub fn new(portal: SocketAddr) -> Browser {
        Browser {
            portal,
            cookies: BTreeMap::new(),
            from: None,
        }
    }

    /// The CSRF token the portal gave this browser (after a first GET).
    pub fn csrf(&self) -> String {
        self.cookies
            .get("__Host-sluice_csrf")
            .cloned()
            .unwrap_or_default()
    }

    pub async fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, &[], None).await
    }

    /// Posts a form as the portal's page would: with the CSRF token added.
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Response {
        let csrf = self.csrf();
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post_raw(path, &all).await
    }

    /// Posts exactly `fields` (no CSRF token unless given).
    pub async fn post_raw(&mut self, path: &str, fields: &[(&str, &str)]) -> Response {
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let headers = [("Content-Type", "application/x-www-form-urlencoded")];
        self.request("POST", path, &headers, Some(body.join("&").as_bytes()))
            .await
    }

    /// Any request; `Set-Cookie`s in the response are kept (an empty or expired one
    /// removes the cookie).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(from) = self.from {
            socket.bind(SocketAddr::new(from, 0)).unwrap();
        }
        let mut stream = socket
            .connect(self.portal)
            .await
            .expect("connect to the portal");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n",
            self.portal.port()
        );
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            head.push_str(&format!("Cookie: {}\r\n", jar.join("; ")));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        if let Some(body) = body {
            stream.write_all(body).await.unwrap();
        }
        let mut raw = Vec::new();
        tokio::time::timeout(super::PATIENCE, stream.read_to_end(&mut raw))
            .await
            .expect("the portal answers")
            .unwrap();
        let response = parse(&raw);
        for cookie in response.set_cookies() {
            let pair = cookie.split(';').next().unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() || cookie.contains("Max-Age=0") {
                    self.cookies.remove(name);
                } else {
                    self.cookies.insert(name.to_string(), value.to_string());
                }
            }
        }
        response
    }
}

/// An HTTP/1.1 response read to the end of the connection (chunked bodies joined).
pub fn parse(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = unchunk(&body);
    }
    Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn unchunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
    out
}
