//! DKIM signing (RFC 6376; Ed25519 by RFC 8463) of every message the relay accepts, for
//! the relay's own domain, before it is spooled: what the next hop receives carries the
//! signature. Signing is mail-auth's, with ring's RSA and Ed25519 (already in the build
//! for TLS).
//!
//! Rotation: every key in `[dkim]` is loaded and checked, `selector` signs; `sluice
//! reload` (or SIGHUP) reads the section again and switches at once, without a restart.
//! A section that fails to load keeps the signer that was running.

use crate::config::{Canon, DkimConfig};
use anyhow::{Context, bail};
use arc_swap::ArcSwapOption;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::sync::Arc;

/// A loaded key, ready to sign.
enum Key {
    Rsa(Box<DkimSigner<RsaKey<Sha256>, Done>>),
    Ed25519(Box<DkimSigner<Ed25519Key, Done>>),
}

/// The signer of one selector.
pub struct Signer {
    key: Key,
    selector: String,
    domain: String,
}

impl Signer {
    /// Loads every key of the section and builds the signer of `selector`.
    pub fn load(config: &DkimConfig) -> anyhow::Result<Signer> {
        let template = Template {
            domain: &config.domain,
            headers: &config.headers,
            header_c: canonicalization(config.canonicalization.header),
            body_c: canonicalization(config.canonicalization.body),
        };
        let load = |selector: &str, path: &Path| {
            load_key(path, selector, &template)
                .with_context(|| format!("dkim: selector {selector}: {}", path.display()))
        };
        // The other selectors' keys are loaded too, so that a broken one is found before
        // anyone switches to it.
        for (selector, path) in config.keys.iter().filter(|(s, _)| **s != config.selector) {
            load(selector, path)?;
        }
        let Some(path) = config.active_key() else {
            bail!("dkim: no key for selector {}", config.selector);
        };
        let key = load(&config.selector, path)?;
        Ok(Signer {
            key,
            selector: config.selector.clone(),
            domain: config.domain.clone(),
        })
    }

    /// The `DKIM-Signature` field for the message made of `chunks` in turn, CRLF-terminated.
    /// Every chunk but the last must hold whole header fields only: mail-auth reads header
    /// fields across chunks but takes the body from the chunk where the header section ends.
    pub fn sign(&self, chunks: &[&[u8]]) -> anyhow::Result<String> {
        fn with<K: SigningKey>(
            signer: &DkimSigner<K, Done>,
            chunks: &[&[u8]],
        ) -> mail_auth::Result<mail_auth::dkim::Signature> {
            match chunks {
                [] => signer.sign(b""),
                [whole] => signer.sign(whole),
                // Never empty here: mail-auth's chained signing panics on no chunk at all.
                chunks => signer.sign_chained(chunks.iter().copied()),
            }
        }
        let signature = match &self.key {
            Key::Rsa(signer) => with(signer, chunks),
            Key::Ed25519(signer) => with(signer, chunks),
        }
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(signature.to_header())
    }

    /// `d=DOMAIN s=SELECTOR (rsa-sha256|ed25519-sha256)`, for the log and `sluice reload`.
    pub fn describe(&self) -> String {
        let algorithm = match self.key {
            Key::Rsa(_) => "rsa-sha256",
            Key::Ed25519(_) => "ed25519-sha256",
        };
        format!("d={} s={} {algorithm}", self.domain, self.selector)
    }
}

/// The configuration's word for a canonicalization, in mail-auth's.
fn canonicalization(canon: Canon) -> Canonicalization {
    match canon {
        Canon::Relaxed => Canonicalization::Relaxed,
        Canon::Simple => Canonicalization::Simple,
    }
}

/// What every signer of the section shares.
struct Template<'a> {
    domain: &'a str,
    headers: &'a [String],
    header_c: Canonicalization,
    body_c: Canonicalization,
}

impl Template<'_> {
    fn signer<K: SigningKey>(&self, key: K, selector: &str) -> Box<DkimSigner<K, Done>> {
        Box::new(
            DkimSigner::from_key(key)
                .domain(self.domain)
                .selector(selector)
                .headers(self.headers.iter().cloned())
                .header_canonicalization(self.header_c)
                .body_canonicalization(self.body_c),
        )
    }
}

fn load_key(path: &Path, selector: &str, template: &Template<'_>) -> anyhow::Result<Key> {
    let pem = std::fs::read(path)?;
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| anyhow::anyhow!("not a PEM private key: {e}"))?;
    let ed25519 = match &der {
        // OpenSSL writes PKCS#8 v1 (without the public key), which ring checks only so far.
        PrivateKeyDer::Pkcs8(pkcs8) => {
            Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der()).ok()
        }
        _ => None,
    };
    if let Some(key) = ed25519 {
        return Ok(Key::Ed25519(template.signer(key, selector)));
    }
    let key = match &der {
        PrivateKeyDer::Pkcs8(pkcs8) => RsaKey::<Sha256>::from_pkcs8_der(pkcs8.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(pkcs1) => RsaKey::<Sha256>::from_der(pkcs1.secret_pkcs1_der()),
        _ => bail!("an EC key: DKIM signs with RSA or Ed25519"),
    }
    .map_err(|e| anyhow::anyhow!("neither an Ed25519 nor an RSA key: {e}"))?;
    Ok(Key::Rsa(template.signer(key, selector)))
}

/// The relay's signer, replaced whole on reload.
#[derive(Default)]
pub struct Dkim {
    current: ArcSwapOption<Signer>,
}

impl Dkim {
    /// The signer for `config` (none: nothing is signed).
    pub fn new(config: Option<&DkimConfig>) -> anyhow::Result<Dkim> {
        let dkim = Dkim::default();
        dkim.reload(config)?;
        Ok(dkim)
    }

    /// Loads `config` and signs with it from now on; on an error the running signer stays.
    pub fn reload(&self, config: Option<&DkimConfig>) -> anyhow::Result<String> {
        let signer = config.map(Signer::load).transpose()?;
        let described = signer.as_ref().map_or("DKIM signing off".to_string(), |s| {
            format!("DKIM signing {}", s.describe())
        });
        self.current.store(signer.map(Arc::new));
        Ok(described)
    }

    /// The `DKIM-Signature` field for the message made of `chunks` (see [`Signer::sign`]),
    /// or `None` when not signing (or when signing failed, which is logged: the message
    /// goes unsigned rather than not at all).
    pub fn sign(&self, chunks: &[&[u8]]) -> Option<String> {
        let signer = self.current.load_full()?;
        match signer.sign(chunks) {
            Ok(field) => Some(field),
            Err(e) => {
                tracing::error!(target: "sluice::dkim", "DKIM signing failed ({}): {e}", signer.describe());
                None
            }
        }
    }
}
