//! The keys tokens are verified with: an HS256 shared secret, or a file of public keys (PEM
//! blocks or a JWKS JSON document), each key pinned to the algorithms of its type.
//!
//! Pinning is what keeps algorithm confusion out: a secret verifies only HS256, an RSA key only
//! RS*/PS*, an EC key only ES256/ES384, an Ed25519 key only EdDSA. `none` is never accepted
//! (the token library has no such algorithm), and a public key is never used as an HMAC secret.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use thiserror::Error;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

/// Why a key file could not be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyError {
    /// The file has no usable key.
    #[error("no public key found (expected PEM \"PUBLIC KEY\" blocks or a JWKS JSON document)")]
    Empty,
    /// A PEM block is not a public key of a supported type.
    #[error("PEM block {0} is not an RSA, EC (P-256/P-384) or Ed25519 public key")]
    BadPem(usize),
    /// A private key was given where a public key belongs.
    #[error("PEM block {0} is a private key; give the public key")]
    PrivatePem(usize),
    /// The JWKS document is not valid JSON of the expected shape.
    #[error("not a valid JWKS document: {0}")]
    BadJwks(String),
}

/// One verification key.
pub struct Key {
    /// `kid` from the JWKS, if any.
    pub kid: Option<String>,
    /// The algorithms this key verifies (one family).
    pub algorithms: Vec<Algorithm>,
    /// The key itself.
    pub decoding: DecodingKey,
    /// Whether the key is still in the key set: the streams its tokens opened watch it.
    pub life: Arc<KeyLife>,
    /// What the key was read from (the PEM block, or the JWK), to know it again in a
    /// reloaded file.
    source: Vec<u8>,
}

/// Whether a key is still in the key set. A key that leaves it (a rotation after a leak) is
/// revoked: the streams its tokens opened end (`event: expired`, "the signing key was
/// revoked"), not only new requests that carry them.
#[derive(Debug, Default)]
pub struct KeyLife {
    revoked: AtomicBool,
    notify: Arc<Notify>,
}

impl KeyLife {
    /// True once the key left the key set.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// A watch of this key for one stream.
    pub fn watch(self: &Arc<Self>) -> Revocation {
        let mut notified = Box::pin(self.notify.clone().notified_owned());
        // Registered now: a revocation from here on wakes the stream.
        notified.as_mut().enable();
        Revocation {
            life: self.clone(),
            notified,
        }
    }
}

/// One stream's watch of the key its token was verified with.
pub struct Revocation {
    life: Arc<KeyLife>,
    notified: std::pin::Pin<Box<OwnedNotified>>,
}

impl Revocation {
    /// True once the key is revoked; else registers `cx` to be woken when a key leaves the set.
    pub fn poll_revoked(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        use std::future::Future;
        loop {
            if self.life.is_revoked() {
                return true;
            }
            if self.notified.as_mut().poll(cx).is_pending() {
                return false;
            }
            self.notified = Box::pin(self.life.notify.clone().notified_owned());
            self.notified.as_mut().enable();
        }
    }
}

/// Every key a token may be verified with.
pub struct KeySet {
    keys: Vec<Key>,
    /// Keys of a JWKS skipped as unsupported (symmetric, P-521, encryption-only).
    pub skipped: usize,
}

const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

impl KeySet {
    /// An HS256 shared secret.
    pub fn secret(secret: &[u8]) -> KeySet {
        KeySet {
            keys: vec![Key {
                kid: None,
                algorithms: vec![Algorithm::HS256],
                decoding: DecodingKey::from_secret(secret),
                life: Arc::default(),
                source: Vec::new(),
            }],
            skipped: 0,
        }
    }

    /// Keys from a file's contents: a JWKS document (JSON) or one or more PEM public keys.
    pub fn parse(contents: &[u8]) -> Result<KeySet, KeyError> {
        let text = String::from_utf8_lossy(contents);
        let set = if text.trim_start().starts_with('{') {
            jwks(&text)?
        } else {
            pem_blocks(&text)?
        };
        if set.keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(set)
    }

    /// Takes the place of `old` after a reload: a key in both (the same PEM block, or the
    /// same JWK) keeps its life, so the streams it opened go on; a key of `old` not in this set
    /// is revoked. Returns how many were revoked.
    pub fn replace(&mut self, old: &KeySet) -> usize {
        for key in &mut self.keys {
            if let Some(same) = old.keys.iter().find(|o| o.source == key.source) {
                key.life = same.life.clone();
            }
        }
        let mut revoked = 0;
        for key in &old.keys {
            if !self.keys.iter().any(|k| k.source == key.source) {
                key.life.revoke();
                revoked += 1;
            }
        }
        revoked
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none (never, for a set that parsed).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys that may verify a token whose header names `kid` and `alg`: those of its `kid`
    /// when keys have ids, else every key whose type allows `alg`.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        let by_id = kid.is_some() && self.keys.iter().any(|k| k.kid.is_some());
        self.keys
            .iter()
            .filter(move |k| k.algorithms.contains(&alg) && (!by_id || k.kid.as_deref() == kid))
    }
}

fn pem_blocks(text: &str) -> Result<KeySet, KeyError> {
    let mut keys = Vec::new();
    let mut rest = text;
    let mut n = 0;
    while let Some(begin) = rest.find("-----BEGIN ") {
        n += 1;
        let block = &rest[begin..];
        let label_end = block[11..].find("-----").map(|i| i + 11);
        let Some(label_end) = label_end else {
            return Err(KeyError::BadPem(n));
        };
        let label = &block[11..label_end];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = block.find(&end_marker) else {
            return Err(KeyError::BadPem(n));
        };
        let pem = &block[..end + end_marker.len()];
        rest = &block[end + end_marker.len()..];
        if label.contains("PRIVATE") {
            return Err(KeyError::PrivatePem(n));
        }
        let pem = pem.as_bytes();
        let key = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            (k, RSA.to_vec())
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            // ring checks the curve when verifying: a P-256 key never verifies ES384.
            (k, vec![Algorithm::ES256, Algorithm::ES384])
        } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
            (k, vec![Algorithm::EdDSA])
        } else {
            return Err(KeyError::BadPem(n));
        };
        keys.push(Key {
            kid: None,
            algorithms: key.1,
            decoding: key.0,
            life: Arc::default(),
            source: pem.to_vec(),
        });
    }
    Ok(KeySet { keys, skipped: 0 })
}

/// A JWKS document. Each key is read on its own: one the gateway cannot use (P-521, an
/// encryption algorithm, a key type it does not know) is skipped, and the others still load.
fn jwks(text: &str) -> Result<KeySet, KeyError> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document =
        serde_json::from_str(text).map_err(|e| KeyError::BadJwks(e.to_string()))?;
    let mut keys = Vec::new();
    let mut skipped = 0;
    for value in document.keys {
        let source = value.to_string().into_bytes();
        match serde_json::from_value::<Jwk>(value)
            .ok()
            .as_ref()
            .and_then(jwk_key)
        {
            Some(key) => keys.push(Key { source, ..key }),
            None => skipped += 1,
        }
    }
    Ok(KeySet { keys, skipped })
}

/// A JWK usable for verifying signatures, pinned to its type (and to its `alg` when given).
fn jwk_key(jwk: &Jwk) -> Option<Key> {
    use jsonwebtoken::jwk::PublicKeyUse;
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA.to_vec(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        // Symmetric keys do not belong in a public key set.
        _ => return None,
    };
    let algorithms = match jwk.common.key_algorithm.and_then(algorithm) {
        Some(alg) if family.contains(&alg) => vec![alg],
        Some(_) => return None,
        None if jwk.common.key_algorithm.is_some() => return None,
        None => family,
    };
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        algorithms,
        decoding,
        life: Arc::default(),
        source: Vec::new(),
    })
}

fn algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_without_public_keys_are_refused_with_a_reason() {
        assert!(matches!(KeySet::parse(b""), Err(KeyError::Empty)));
        assert!(matches!(KeySet::parse(b"hello"), Err(KeyError::Empty)));
        assert!(matches!(
            KeySet::parse(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
            Err(KeyError::BadPem(1))
        ));
        assert!(matches!(
            KeySet::parse(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            Err(KeyError::PrivatePem(1))
        ));
        assert!(matches!(
            KeySet::parse(b"{\"keys\": 3}"),
            Err(KeyError::BadJwks(_))
        ));
        assert!(matches!(
            KeySet::parse(b"{\"keys\": []}"),
            Err(KeyError::Empty)
        ));
        // A symmetric key in a public key set is skipped, never used.
        let oct = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}"#;
        assert!(matches!(KeySet::parse(oct), Err(KeyError::Empty)));
    }

    #[test]
    fn a_secret_verifies_only_hs256() {
        let set = KeySet::secret(b"0123456789abcdef0123456789abcdef");
        assert_eq!(set.candidates(None, Algorithm::HS256).count(), 1);
        assert_eq!(set.candidates(None, Algorithm::RS256).count(), 0);
        assert_eq!(set.candidates(None, Algorithm::HS512).count(), 0);
    }
}
