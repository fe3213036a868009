//! TLS for the SMTP listeners: the certificate from the configuration, or a self-signed
//! one made at start-up. TLS 1.2 and 1.3 only.
//!
//! The certificate is reloaded when its files change (watched like the policies
//! directory) and on `sluice reload` or SIGHUP: new handshakes get the new one, sessions
//! already encrypted keep theirs. A pair that does not load (a half-copied file, a key
//! that does not match) leaves the running one in place.

use crate::config::TlsConfig;
use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// The rustls provider used everywhere in the relay.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate the listeners offer, replaced whole on reload.
#[derive(Debug)]
pub struct Certificates {
    files: Option<(PathBuf, PathBuf)>,
    current: ArcSwap<CertifiedKey>,
    /// A checksum of the files' contents as last loaded, so an event that changed nothing
    /// (a touch, another file in the directory) reloads nothing.
    loaded: std::sync::Mutex<u32>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl Certificates {
    /// The configured certificate, or a self-signed one for `hostname`.
    pub fn load(config: &TlsConfig, hostname: &str) -> anyhow::Result<Arc<Certificates>> {
        let files = config.cert.clone().zip(config.key.clone());
        let mut loaded = 0;
        let current = match &files {
            Some((cert, key)) => {
                loaded = contents(cert, key);
                read_pair(cert, key)?
            }
            None => {
                tracing::warn!(
                    hostname,
                    "no [tls] cert and key configured: STARTTLS uses a self-signed certificate made at start-up"
                );
                self_signed(hostname)?
            }
        };
        Ok(Arc::new(Certificates {
            files,
            current: ArcSwap::from_pointee(current),
            loaded: std::sync::Mutex::new(loaded),
        }))
    }

    /// The certificate and key files, when configured (what the watcher watches).
    pub fn files(&self) -> Option<&(PathBuf, PathBuf)> {
        self.files.as_ref()
    }

    /// Reads the files again; on an error the running certificate stays.
    pub fn reload(&self) -> anyhow::Result<String> {
        self.load_files(true).map(|said| {
            said.unwrap_or_else(|| "TLS: self-signed certificate (none configured)".into())
        })
    }

    /// Reloads when the files' contents differ from what was loaded; `Ok(None)` when not.
    pub fn reload_if_changed(&self) -> anyhow::Result<Option<String>> {
        self.load_files(false)
    }

    fn load_files(&self, always: bool) -> anyhow::Result<Option<String>> {
        let Some((cert, key)) = &self.files else {
            return Ok(None);
        };
        let sum = contents(cert, key);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if !always && sum == *loaded {
            return Ok(None);
        }
        self.current.store(Arc::new(read_pair(cert, key)?));
        *loaded = sum;
        Ok(Some(format!("TLS certificate {} loaded", cert.display())))
    }
}

/// A checksum of both files (0 when either cannot be read).
fn contents(cert: &PathBuf, key: &PathBuf) -> u32 {
    match (std::fs::read(cert), std::fs::read(key)) {
        (Ok(mut both), Ok(key)) => {
            both.extend_from_slice(&key);
            crc32fast::hash(&both)
        }
        _ => 0,
    }
}

fn read_pair(cert: &PathBuf, key: &PathBuf) -> anyhow::Result<CertifiedKey> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).with_context(|| format!("tls.cert: {}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("tls.cert: {}: not a PEM certificate chain", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("tls.cert: {}: no certificate in the file", cert.display());
    }
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("tls.key: {}", key.display()))?,
    ))
    .with_context(|| format!("tls.key: {}: not a PEM private key", key.display()))?
    .ok_or_else(|| anyhow::anyhow!("tls.key: {}: no private key in the file", key.display()))?;
    CertifiedKey::from_der(certs, key, &provider())
        .context("TLS certificate and key do not fit together")
}

fn self_signed(hostname: &str) -> anyhow::Result<CertifiedKey> {
    let generated = rcgen::generate_simple_self_signed(vec![hostname.to_string()])
        .context("making a self-signed certificate")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(generated.key_pair.serialize_der()));
    CertifiedKey::from_der(
        vec![CertificateDer::from(generated.cert.der().to_vec())],
        key,
        &provider(),
    )
    .context("the self-signed certificate")
}

/// The acceptor for STARTTLS and implicit TLS, offering whatever `certificates` holds.
pub fn acceptor(certificates: Arc<Certificates>) -> anyhow::Result<TlsAcceptor> {
    let server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    Ok(TlsAcceptor::from(Arc::new(server)))
}
