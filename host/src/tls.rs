//! TLS for the SMTP listeners: the certificate from the configuration, or a self-signed
//! one made at start-up. TLS 1.2 and 1.3 only.

use crate::config::TlsConfig;
use anyhow::Context;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// The rustls provider used everywhere in the relay.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the acceptor offered with STARTTLS.
pub fn acceptor(config: &TlsConfig, hostname: &str) -> anyhow::Result<TlsAcceptor> {
    let (certs, key) = match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => {
            let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
                std::fs::File::open(cert)
                    .with_context(|| format!("tls.cert: {}", cert.display()))?,
            ))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| {
                format!("tls.cert: {}: not a PEM certificate chain", cert.display())
            })?;
            if certs.is_empty() {
                anyhow::bail!("tls.cert: {}: no certificate in the file", cert.display());
            }
            let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
                std::fs::File::open(key).with_context(|| format!("tls.key: {}", key.display()))?,
            ))
            .with_context(|| format!("tls.key: {}: not a PEM private key", key.display()))?
            .ok_or_else(|| {
                anyhow::anyhow!("tls.key: {}: no private key in the file", key.display())
            })?;
            (certs, key)
        }
        _ => {
            tracing::warn!(
                hostname,
                "no [tls] cert and key configured: STARTTLS uses a self-signed certificate made at start-up"
            );
            let generated = rcgen::generate_simple_self_signed(vec![hostname.to_string()])
                .context("making a self-signed certificate")?;
            let key =
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(generated.key_pair.serialize_der()));
            (
                vec![CertificateDer::from(generated.cert.der().to_vec())],
                key,
            )
        }
    };
    let server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key do not fit together")?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}
