//! DKIM signing (RFC 6376; Ed25519 by RFC 8463) of every message the relay accepts, for
//! the relay's own domain, before it is spooled: what the next hop receives carries the
//! signature. mail-auth reads the message (which header fields, canonicalized; the body
//! hash) and holds the keys, with ring's RSA and Ed25519 (already in the build for TLS);
//! the `DKIM-Signature` field is written here, with `b=` last and nothing after its value,
//! and signed as written (see [`sign`]). The end-to-end tests check the signatures with
//! three verifiers: mail-auth's, dkimpy and Perl's Mail::DKIM.
//!
//! Rotation: every key in `[dkim]` is loaded and checked, `selector` signs; `sluice
//! reload` (or SIGHUP) reads the section again and switches at once, without a restart.
//! A section that fails to load keeps the signer that was running.

use crate::config::{Canon, DkimConfig};
use anyhow::{Context, bail};
use arc_swap::ArcSwapOption;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use mail_auth::common::crypto::{Algorithm, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::Writable;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done, Signature};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use sluice_mail::mime::valid_field_name;
use std::cell::RefCell;
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
        // Each goes into the field as it is: one with a `;` or white space would break it.
        if !is_dns_name(&config.domain) {
            bail!("dkim: domain {:?} is not a domain name", config.domain);
        }
        // A `;` would end the h= tag (RFC 6376 3.2: tag values have none).
        if let Some(name) =
            (config.headers.iter()).find(|h| !valid_field_name(h) || h.contains(';'))
        {
            bail!("dkim: headers: {name:?} is not a header field name");
        }
        let template = Template {
            domain: &config.domain,
            headers: &config.headers,
            header_c: canonicalization(config.canonicalization.header),
            body_c: canonicalization(config.canonicalization.body),
        };
        let load = |selector: &str, path: &Path| {
            if !is_dns_name(selector) {
                bail!("dkim: selector {selector:?} is not a DNS name");
            }
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
    pub fn sign(&self, chunks: &[&[u8]]) -> Result<String, SignError> {
        match &self.key {
            Key::Rsa(signer) => sign(signer, chunks),
            Key::Ed25519(signer) => sign(signer, chunks),
        }
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

/// Why a message could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// mail-auth could not read the message or sign (no header field at all, a key error).
    #[error("mail-auth: {0}")]
    MailAuth(#[from] mail_auth::Error),
    /// What mail-auth handed the key does not end with its own rendering of the field, so
    /// the header fields cannot be told apart from it: a mail-auth that works differently
    /// from 0.12's. Nothing is signed rather than something unverifiable.
    #[error("mail-auth's signing input does not end with its DKIM-Signature field")]
    UnexpectedInput,
}

/// The field's name.
const FIELD: &str = "DKIM-Signature";

/// Longest line of the field (RFC 5322 2.1.1 asks for 78 characters at most).
const LINE: usize = 78;

/// Signs the message made of `chunks` (see [`Signer::sign`]) with `signer`'s key and tags.
///
/// mail-auth reads the message ([`prepare`]); the field is ours ([`unsigned_value`]), and
/// the key signs the header fields mail-auth picked followed by that field, so the field
/// sent is exactly the field signed. We write the field because mail-auth (0.7.0 to 0.13.3
/// alike) ends it `b=VALUE;` and folds before that `;` when the value fills its line:
/// dkimpy hashes that white space, mail-auth did not, and dkimpy rejects the signature.
/// Ours ends with the `b=` value.
fn sign<K: SigningKey>(
    signer: &DkimSigner<K, Done>,
    chunks: &[&[u8]],
) -> Result<String, SignError> {
    let (signature, mut input) = prepare(&signer.key, &signer.template, chunks)?;
    // RFC 6376 3.7: the field itself, canonicalized as the others, with an empty b= and
    // without its final CRLF.
    let unsigned = unsigned_value(&signature);
    signature.ch.canonicalize_headers(
        std::iter::once((FIELD.as_bytes(), unsigned.as_bytes())),
        &mut input,
    );
    let b = BASE64.encode(signer.key.sign(input.as_slice())?);
    Ok(format!("{FIELD}:{}", with_b(unsigned, &b)))
}

/// mail-auth's preparation of a signature with `template`: it picks the header fields that
/// `h=` lists, canonicalizes them, hashes the body, fills in `h=`, `t=` and `bh=`, and hands
/// its key the fields followed by its own rendering of the field. A [`Recorder`] stands in
/// for the key; returned are the signature without `b=` and the canonicalized fields.
fn prepare<K: SigningKey>(
    key: &K,
    template: &Signature,
    chunks: &[&[u8]],
) -> Result<(Signature, Vec<u8>), SignError> {
    let recorder = Recorder {
        key,
        input: RefCell::default(),
    };
    // The builder's values are placeholders: the template replaces them all.
    let mut preparer = DkimSigner::from_key(recorder)
        .domain("")
        .selector("")
        .headers([""; 0]);
    preparer.template = template.clone();
    let signature = match chunks {
        [] => preparer.sign(b""),
        [whole] => preparer.sign(whole),
        // Never empty here: mail-auth's chained signing panics on no chunk at all.
        chunks => preparer.sign_chained(chunks.iter().copied()),
    }?;
    let mut input = preparer.key.input.into_inner();
    let mut theirs = Vec::new();
    signature.write(&mut theirs, false);
    let fields = input
        .len()
        .checked_sub(theirs.len())
        .filter(|&at| input[at..] == theirs[..])
        .ok_or(SignError::UnexpectedInput)?;
    input.truncate(fields);
    Ok((signature, input))
}

/// A key that signs nothing: it keeps what it is given to sign (see [`prepare`]).
struct Recorder<'k, K> {
    key: &'k K,
    input: RefCell<Vec<u8>>,
}

impl<K: SigningKey> SigningKey for Recorder<'_, K> {
    type Hasher = K::Hasher;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        input.write(&mut *self.input.borrow_mut());
        Ok(Vec::new())
    }

    fn algorithm(&self) -> Algorithm {
        self.key.algorithm()
    }
}

/// The value of `signature`'s `DKIM-Signature` field (what follows the colon) up to `b=`,
/// folded at [`LINE`]; [`with_b`] adds the value of b=. It has the tags this module's
/// template sets and mail-auth fills in: v, a, c, d, s, t, h, bh (no i=, l=, x=, z=, r=
/// or atps=: the template never has them).
fn unsigned_value(signature: &Signature) -> String {
    let mut field = Folded {
        text: String::new(),
        line: FIELD.len() + 1,
    };
    let algorithm = match signature.a {
        Algorithm::RsaSha256 => "rsa-sha256",
        Algorithm::RsaSha1 => "rsa-sha1",
        Algorithm::Ed25519Sha256 => "ed25519-sha256",
    };
    let name = |c: Canonicalization| match c {
        Canonicalization::Relaxed => "relaxed",
        Canonicalization::Simple => "simple",
    };
    for tag in [
        "v=1;".to_string(),
        format!("a={algorithm};"),
        format!("c={}/{};", name(signature.ch), name(signature.cb)),
        format!("d={};", signature.d),
        format!("s={};", signature.s),
        format!("t={};", signature.t),
    ] {
        field.push(" ", &tag);
    }
    // h= folds after a colon (RFC 6376 3.5 allows FWS there): a long list stays in lines.
    let last = signature.h.len().saturating_sub(1);
    for (n, header) in signature.h.iter().enumerate() {
        let (space, prefix) = if n == 0 { (" ", "h=") } else { ("", "") };
        let end = if n == last { ";" } else { ":" };
        field.push(space, &format!("{prefix}{header}{end}"));
    }
    field.push(
        " ",
        &format!("bh={};", String::from_utf8_lossy(&signature.bh)),
    );
    // b= on a line of its own, so that where its value folds never depends on the rest.
    field.text.push_str("\r\n\tb=");
    field.text
}

/// `unsigned` (from [`unsigned_value`]) with the `b=` value, folded at [`LINE`] (white space
/// inside the value is allowed and ignored), and the final CRLF right after it.
fn with_b(unsigned: String, b: &str) -> String {
    let mut field = unsigned;
    // The first line holds a tab and "b=".
    let (first, rest) = b.split_at(b.len().min(LINE - 3));
    field.push_str(first);
    // Base64 is ASCII: every byte boundary is a character boundary.
    for line in rest.as_bytes().chunks(LINE - 1) {
        field.push_str("\r\n\t");
        field.push_str(&String::from_utf8_lossy(line));
    }
    field.push_str("\r\n");
    field
}

/// A field being written, folded before a word that would not fit on its line.
struct Folded {
    text: String,
    /// Characters on the last line so far.
    line: usize,
}

impl Folded {
    /// Adds `word` after `space`, or on a new line (folding white space instead of
    /// `space`) when it would make the line longer than [`LINE`].
    fn push(&mut self, space: &str, word: &str) {
        if self.line + space.len() + word.len() > LINE {
            self.text.push_str("\r\n\t");
            self.line = 1;
        } else {
            self.text.push_str(space);
            self.line += space.len();
        }
        self.text.push_str(word);
        self.line += word.len();
    }
}

/// Can `name` stand in `d=` or `s=`: dot-separated labels of letters, digits, `-` and `_`?
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
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
    let key = match der {
        PrivateKeyDer::Pkcs8(_) | PrivateKeyDer::Pkcs1(_) => RsaKey::<Sha256>::from_key_der(der),
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

#[cfg(test)]
mod tests {
    use super::*;
    use mail_auth::common::parse::TxtRecordParser;
    use mail_auth::common::verify::DomainKey;
    use mail_auth::{
        AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
    };
    use std::borrow::Borrow;
    use std::collections::HashMap;
    use std::hash::Hash;
    use std::sync::Mutex;

    const MESSAGE: &str = "From: App <app@example.edu>\r\nTo: someone@example.org\r\n\
        Subject: a subject that its writer\r\n folded\r\nX-Campus: 1\r\nX-Campus: 2\r\n\r\n\
        A body  with\tinner white space \r\n\r\n";

    fn fixture(name: &str) -> String {
        format!(
            "{}/../tests/fixtures/dkim/{name}",
            env!("CARGO_MANIFEST_DIR")
        )
    }

    fn config(domain: &str, selector: &str, canon: &str) -> DkimConfig {
        let toml = format!(
            "domain = \"{domain}\"\nselector = \"{selector}\"\ncanonicalization = \"{canon}\"\n\
             [keys]\ns1 = \"{}\"\ns2 = \"{}\"\n",
            fixture("rsa-s1.pem"),
            fixture("ed25519-s2.pem")
        );
        toml::from_str(&toml).unwrap()
    }

    /// mail-auth's view of DNS: the fixture keys, under every domain the test uses.
    #[derive(Default)]
    struct Dns(Mutex<HashMap<Box<str>, Txt>>);

    impl ResolverCache<Box<str>, Txt> for Dns {
        fn get<Q>(&self, name: &Q) -> Option<Txt>
        where
            Box<str>: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            self.0.lock().unwrap().get(name).cloned()
        }
        fn remove<Q>(&self, name: &Q) -> Option<Txt>
        where
            Box<str>: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            self.0.lock().unwrap().remove(name)
        }
        fn insert(&self, key: Box<str>, value: Txt, _: std::time::Instant) {
            self.0.lock().unwrap().insert(key, value);
        }
    }

    impl Dns {
        fn publish(&self, domain: &str) {
            for (selector, kind, public) in [
                ("s1", "rsa", "rsa-s1.pub.b64"),
                ("s2", "ed25519", "ed25519-s2.pub.b64"),
            ] {
                let p = std::fs::read_to_string(fixture(public)).unwrap();
                let record = format!("v=DKIM1; k={kind}; p={}", p.trim());
                self.insert(
                    format!("{selector}._domainkey.{domain}.").into(),
                    Txt::from(DomainKey::parse(record.as_bytes()).unwrap()),
                    std::time::Instant::now(),
                );
            }
        }

        async fn verify(&self, message: &[u8]) -> Vec<DkimResult> {
            let message = AuthenticatedMessage::parse(message).expect("a message");
            MessageAuthenticator::new_cloudflare()
                .unwrap()
                .verify_dkim(Parameters::new(&message).with_txt_cache(self))
                .await
                .iter()
                .map(|output| output.result().clone())
                .collect()
        }
    }

    fn is_base64(c: char) -> bool {
        c.is_ascii_alphanumeric() || "+/=".contains(c)
    }

    /// Whatever the lengths before it, `b=` comes last, its value ends right before the
    /// final CRLF, no line is longer than 78 characters, the tags are those configured,
    /// and mail-auth's verifier passes the message: with either key and canonicalization,
    /// for domains from 6 to 85 characters (so that every fold point moves across a line).
    /// Only a tag longer than a line by itself (a long d=) makes a longer line.
    #[tokio::test]
    async fn b_is_last_and_the_field_verifies_wherever_it_folds() {
        let dns = Dns::default();
        for n in 1..=80 {
            // Labels of up to 9 characters, as in a real domain: n characters before ".test".
            let label = |i: usize| if i % 10 == 9 { '.' } else { 'd' };
            let domain = format!("{}d.test", (1..n).map(label).collect::<String>());
            dns.publish(&domain);
            for selector in ["s1", "s2"] {
                for canon in [
                    "relaxed/relaxed",
                    "simple/simple",
                    "relaxed/simple",
                    "simple/relaxed",
                ] {
                    let mut config = config(&domain, selector, canon);
                    // Listed and there twice: signed twice.
                    config.headers.push("X-Campus".into());
                    let signer = Signer::load(&config).unwrap();
                    let field = signer.sign(&[MESSAGE.as_bytes()]).unwrap();
                    let context = format!("{domain} {selector} {canon}:\n{field}");
                    let lines: Vec<&str> =
                        field.strip_suffix("\r\n").unwrap().split("\r\n").collect();
                    let one_tag = |l: &str| !l.trim_end_matches(';').contains(';');
                    assert!(
                        lines.iter().all(|l| l.len() <= LINE || one_tag(l)),
                        "{context}"
                    );
                    assert!(lines[1..].iter().all(|l| l.starts_with('\t')), "{context}");
                    let last = lines.iter().rposition(|l| l.starts_with("\tb=")).unwrap();
                    let value: String = lines[last..].concat();
                    assert!(
                        value["\tb=".len()..]
                            .replace('\t', "")
                            .chars()
                            .all(is_base64),
                        "only b='s value after b=: {context}"
                    );
                    let parsed = Signature::parse(&field.as_bytes()[FIELD.len() + 1..]).unwrap();
                    assert_eq!(
                        (parsed.d.as_str(), parsed.s.as_str()),
                        (domain.as_str(), selector)
                    );
                    assert_eq!(parsed.h.len(), config.headers.len() + 1, "{context}");
                    let signed = format!("{field}{MESSAGE}");
                    assert_eq!(
                        dns.verify(signed.as_bytes()).await,
                        [DkimResult::Pass],
                        "{context}"
                    );
                }
            }
        }
    }

    /// The field as written is what is signed: a changed tag no longer verifies, nor does a
    /// changed fold under simple header canonicalization (relaxed ignores it).
    #[tokio::test]
    async fn the_field_is_signed_as_written() {
        let dns = Dns::default();
        dns.publish("relay.test");
        for canon in ["simple/simple", "relaxed/relaxed"] {
            let signer = Signer::load(&config("relay.test", "s1", canon)).unwrap();
            let field = signer.sign(&[MESSAGE.as_bytes()]).unwrap();
            let signed = format!("{field}{MESSAGE}");
            assert_eq!(dns.verify(signed.as_bytes()).await, [DkimResult::Pass]);
            let t = (field.split("t=").nth(1))
                .and_then(|rest| rest.split(';').next())
                .unwrap();
            let later = (t.parse::<u64>().unwrap() + 1).to_string();
            let changed = signed.replacen(&format!("t={t};"), &format!("t={later};"), 1);
            let results = dns.verify(changed.as_bytes()).await;
            assert!(
                !results.contains(&DkimResult::Pass),
                "{results:?}\n{changed}"
            );

            let refolded = signed.replacen("\r\n\t", "\r\n ", 1);
            assert_ne!(refolded, signed);
            let results = dns.verify(refolded.as_bytes()).await;
            assert_eq!(
                results.contains(&DkimResult::Pass),
                canon.starts_with("relaxed"),
                "{canon}: {results:?}\n{refolded}"
            );
        }
    }

    /// Signed in chunks as in one piece (Ed25519 is deterministic; in the same second).
    #[test]
    fn chunks_sign_as_the_whole() {
        let signer = Signer::load(&config("relay.test", "s2", "relaxed/relaxed")).unwrap();
        let (top, rest) = MESSAGE.split_at(MESSAGE.find("Subject").unwrap());
        for _ in 0..3 {
            let whole = signer.sign(&[MESSAGE.as_bytes()]).unwrap();
            let chunked = signer.sign(&[top.as_bytes(), rest.as_bytes()]).unwrap();
            if whole.contains("t=") && whole.split("t=").nth(1) == chunked.split("t=").nth(1) {
                assert_eq!(whole, chunked);
                return;
            }
        }
        panic!("never signed twice within a second");
    }

    #[test]
    fn names_that_would_break_the_field_are_refused() {
        let refusal = |config: &DkimConfig| match Signer::load(config) {
            Ok(_) => panic!("{config:?} loaded"),
            Err(e) => e.to_string(),
        };
        let bad = config("relay.test;x=1", "s1", "relaxed/relaxed");
        assert!(refusal(&bad).contains("domain"), "{}", refusal(&bad));
        let mut bad = config("relay.test", "s1", "relaxed/relaxed");
        bad.selector = "s 1".into();
        bad.keys.insert("s 1".into(), fixture("rsa-s1.pem").into());
        assert!(
            refusal(&bad).contains("selector \"s 1\""),
            "{}",
            refusal(&bad)
        );
        let mut bad = config("relay.test", "s1", "relaxed/relaxed");
        bad.headers.push("X-Bad;".into());
        assert!(refusal(&bad).contains("X-Bad;"), "{}", refusal(&bad));
    }
}
