//! Token shapes, table-driven: header tricks, claim types, algorithms and key kinds, each with
//! the answer RFC 7515, 7519 and 8725 call for. Every token here is signed correctly (with the
//! key its row names) unless its row is about the signature, so a wrong answer is the claim or
//! header check's, not a signing accident.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

use super::*;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const ISSUER: &str = "https://idp.test/";
const NOW: u64 = 1_800_000_000;

/// Which gateway checks the token.
#[derive(Clone, Copy, Debug)]
enum Gateway {
    /// `KSG_AUTH_JWT_SECRET`, with `KSG_AUTH_JWT_ISSUER=https://idp.test/`.
    Secret,
    /// The same, with `KSG_AUTH_JWT_AUDIENCE=ksg` too.
    SecretAudience,
    /// A PEM RSA public key (`testdata/rsa-public.pem`).
    RsaPem,
    /// A JWKS: an EC P-256 key `ec-1` and an Ed25519 key `ed-1`.
    Jwks,
}

/// What signs the token.
#[derive(Clone, Copy, Debug)]
enum Signer {
    /// The gateway's shared secret, HS256.
    Secret,
    /// Another secret, HS256.
    OtherSecret,
    /// HS256 keyed with the RSA public key's PEM bytes (algorithm confusion).
    RsaPublicAsSecret,
    /// The RSA private key, with the header's `alg`.
    Rsa,
    /// The JWKS's EC key.
    Ec,
    /// An EC key the gateway does not know.
    OtherEc,
    /// The JWKS's Ed25519 key.
    Ed,
    /// No signature at all (an empty third part).
    Nothing,
}

struct Shape {
    name: &'static str,
    gateway: Gateway,
    signer: Signer,
    header: Value,
    claims: Value,
    expect: Result<(), Failure>,
}

/// Valid claims for every gateway here.
fn good() -> Value {
    json!({"exp": NOW + 600, "iss": ISSUER, "aud": "ksg", "sub": "alice",
           "ksg": {"subscribe": ["/stock-prices/*"]}})
}

/// `good()` with `changes` applied (a null value removes the claim).
fn with(changes: Value) -> Value {
    let mut claims = good();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

fn hs256() -> Value {
    json!({"alg": "HS256", "typ": "JWT"})
}

fn shapes() -> Vec<Shape> {
    use Failure::*;
    use Gateway as G;
    use Signer as S;
    let row = |name, gateway, signer, header: Value, claims: Value, expect| Shape {
        name,
        gateway,
        signer,
        header,
        claims,
        expect,
    };
    let ok = Ok(());
    vec![
        // --- the header ---
        row("plain HS256", G::Secret, S::Secret, hs256(), good(), ok),
        row(
            "no typ",
            G::Secret,
            S::Secret,
            json!({"alg": "HS256"}),
            good(),
            ok,
        ),
        row(
            "typ at+jwt",
            G::Secret,
            S::Secret,
            json!({"alg": "HS256", "typ": "at+jwt"}),
            good(),
            ok,
        ),
        row(
            "crit naming an unknown extension",
            G::Secret,
            S::Secret,
            json!({"alg": "HS256", "crit": ["urn:x:must-understand"], "urn:x:must-understand": 1}),
            good(),
            Err(Malformed),
        ),
        row(
            "crit b64 with b64 false",
            G::Secret,
            S::Secret,
            json!({"alg": "HS256", "crit": ["b64"], "b64": false}),
            good(),
            Err(Malformed),
        ),
        row(
            "b64 false without crit",
            G::Secret,
            S::Secret,
            json!({"alg": "HS256", "b64": false}),
            good(),
            Err(Malformed),
        ),
        row(
            "crit empty",
            G::Secret,
            S::Secret,
            json!({"alg": "HS256", "crit": []}),
            good(),
            Err(Malformed),
        ),
        row(
            "b64 true",
            G::Secret,
            S::Secret,
            json!({"alg": "HS256", "b64": true}),
            good(),
            ok,
        ),
        row(
            "alg none",
            G::Secret,
            S::Nothing,
            json!({"alg": "none"}),
            good(),
            Err(BadAlgorithm),
        ),
        row(
            "alg None",
            G::Secret,
            S::Nothing,
            json!({"alg": "None"}),
            good(),
            Err(BadAlgorithm),
        ),
        row(
            "alg missing",
            G::Secret,
            S::Secret,
            json!({"typ": "JWT"}),
            good(),
            Err(Malformed),
        ),
        row(
            "alg ES512",
            G::Secret,
            S::Secret,
            json!({"alg": "ES512"}),
            good(),
            Err(BadAlgorithm),
        ),
        row(
            "alg HS512 where HS256 is the key's",
            G::Secret,
            S::Secret,
            json!({"alg": "HS512"}),
            good(),
            Err(BadAlgorithm),
        ),
        row(
            "a jku the gateway never fetches",
            G::Secret,
            S::Secret,
            json!({"alg": "HS256", "jku": "https://evil.test/keys"}),
            good(),
            ok,
        ),
        row(
            "an embedded jwk of the signer's own",
            G::Jwks,
            S::OtherEc,
            json!({"alg": "ES256", "kid": "ec-1", "jwk": {"kty": "EC", "crv": "P-256",
                   "x": B64.encode([7u8; 32]), "y": B64.encode([9u8; 32])}}),
            good(),
            Err(BadSignature),
        ),
        row(
            "a header that is an array",
            G::Secret,
            S::Secret,
            json!(["HS256"]),
            good(),
            Err(Malformed),
        ),
        row(
            "another secret",
            G::Secret,
            S::OtherSecret,
            hs256(),
            good(),
            Err(BadSignature),
        ),
        row(
            "no signature",
            G::Secret,
            S::Nothing,
            hs256(),
            good(),
            Err(BadSignature),
        ),
        // --- exp, nbf, iat: NumericDates ---
        row(
            "exp missing",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"exp": null})),
            Err(Malformed),
        ),
        row(
            "exp a string",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"exp": (NOW + 600).to_string()})),
            Err(Malformed),
        ),
        row(
            "exp true",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"exp": true})),
            Err(Malformed),
        ),
        row(
            "exp with a fraction",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"exp": NOW as f64 + 600.5})),
            ok,
        ),
        row(
            "exp with a fraction, past",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"exp": NOW as f64 - 0.5})),
            Err(Expired),
        ),
        row(
            "exp now",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"exp": NOW})),
            Err(Expired),
        ),
        row(
            "exp negative",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"exp": -1})),
            Err(Expired),
        ),
        row(
            "exp far away",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"exp": 1e300})),
            ok,
        ),
        row(
            "nbf a string",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"nbf": (NOW - 10).to_string()})),
            Err(Malformed),
        ),
        row(
            "nbf past",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"nbf": NOW - 10})),
            ok,
        ),
        row(
            "nbf within the leeway",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"nbf": NOW + 10})),
            ok,
        ),
        row(
            "nbf past the leeway",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"nbf": NOW + 120})),
            Err(NotYetValid),
        ),
        row(
            "nbf with a fraction",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"nbf": NOW as f64 - 0.25})),
            ok,
        ),
        row(
            "iat a string",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"iat": NOW.to_string()})),
            Err(Malformed),
        ),
        row(
            "iat in the future (not a rule)",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"iat": NOW + 60})),
            ok,
        ),
        // --- iss, sub, aud ---
        row(
            "iss an array holding the issuer",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"iss": ["https://evil.test/", ISSUER]})),
            Err(Malformed),
        ),
        row(
            "iss another",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"iss": "https://evil.test/"})),
            Err(WrongIssuer),
        ),
        row(
            "iss missing",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"iss": null})),
            Err(WrongIssuer),
        ),
        row(
            "iss a number",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"iss": 1})),
            Err(Malformed),
        ),
        row(
            "iss with a trailing difference",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"iss": "https://idp.test"})),
            Err(WrongIssuer),
        ),
        row(
            "sub a number",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"sub": 7})),
            Err(Malformed),
        ),
        row(
            "aud an array holding ksg",
            G::SecretAudience,
            S::Secret,
            hs256(),
            with(json!({"aud": ["other", "ksg"]})),
            ok,
        ),
        row(
            "aud another",
            G::SecretAudience,
            S::Secret,
            hs256(),
            with(json!({"aud": "other"})),
            Err(WrongAudience),
        ),
        row(
            "aud missing",
            G::SecretAudience,
            S::Secret,
            hs256(),
            with(json!({"aud": null})),
            Err(WrongAudience),
        ),
        row(
            "aud a number",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"aud": 3})),
            Err(Malformed),
        ),
        row(
            "aud an array with a number",
            G::SecretAudience,
            S::Secret,
            hs256(),
            with(json!({"aud": ["ksg", 3]})),
            Err(Malformed),
        ),
        row(
            "ksg.subscribe a string",
            G::Secret,
            S::Secret,
            hs256(),
            with(json!({"ksg": {"subscribe": "/stock-prices/*"}})),
            Err(Malformed),
        ),
        row(
            "claims an array",
            G::Secret,
            S::Secret,
            hs256(),
            json!([NOW + 600]),
            Err(Malformed),
        ),
        // --- algorithms and key kinds ---
        row(
            "RS256 with the RSA key",
            G::RsaPem,
            S::Rsa,
            json!({"alg": "RS256"}),
            good(),
            ok,
        ),
        row(
            "PS256 with the RSA key",
            G::RsaPem,
            S::Rsa,
            json!({"alg": "PS256"}),
            good(),
            ok,
        ),
        row(
            "RS512 with the RSA key",
            G::RsaPem,
            S::Rsa,
            json!({"alg": "RS512"}),
            good(),
            ok,
        ),
        row(
            "HS256 keyed with the RSA public key",
            G::RsaPem,
            S::RsaPublicAsSecret,
            hs256(),
            good(),
            Err(BadAlgorithm),
        ),
        row(
            "ES256 by kid",
            G::Jwks,
            S::Ec,
            json!({"alg": "ES256", "kid": "ec-1"}),
            good(),
            ok,
        ),
        row(
            "ES256 with no kid",
            G::Jwks,
            S::Ec,
            json!({"alg": "ES256"}),
            good(),
            ok,
        ),
        row(
            "ES256 with an unknown kid",
            G::Jwks,
            S::Ec,
            json!({"alg": "ES256", "kid": "nope"}),
            good(),
            Err(UnknownKey),
        ),
        row(
            "ES256 by another key",
            G::Jwks,
            S::OtherEc,
            json!({"alg": "ES256", "kid": "ec-1"}),
            good(),
            Err(BadSignature),
        ),
        row(
            "EdDSA by kid",
            G::Jwks,
            S::Ed,
            json!({"alg": "EdDSA", "kid": "ed-1"}),
            good(),
            ok,
        ),
        row(
            "EdDSA naming the EC key's kid",
            G::Jwks,
            S::Ed,
            json!({"alg": "EdDSA", "kid": "ec-1"}),
            good(),
            Err(UnknownKey),
        ),
        row(
            "HS256 against a JWKS with no secret",
            G::Jwks,
            S::Secret,
            hs256(),
            good(),
            Err(BadAlgorithm),
        ),
        row(
            "RS256 against a JWKS with no RSA key",
            G::Jwks,
            S::Rsa,
            json!({"alg": "RS256"}),
            good(),
            Err(BadAlgorithm),
        ),
    ]
}

struct Keys {
    ec: rcgen::KeyPair,
    other_ec: rcgen::KeyPair,
    ed: rcgen::KeyPair,
}

impl Keys {
    fn new() -> Keys {
        let ec = || rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Keys {
            ec: ec(),
            other_ec: ec(),
            ed: rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
        }
    }
}

fn gateway(which: Gateway, keys: &Keys) -> Authorizer {
    let mut settings = AuthSettings {
        keys: KeySource::Secret(SECRET.to_vec()),
        issuer: Some(vec![ISSUER.into()]),
        audience: None,
        cookie: None,
        query_token: false,
        leeway: Duration::from_secs(30),
        expiry_notice: Duration::ZERO,
    };
    let file = |name: &str, contents: &[u8]| {
        let path = std::env::temp_dir().join(format!("ksg-shapes-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        KeySource::File(path)
    };
    match which {
        Gateway::Secret => {}
        Gateway::SecretAudience => settings.audience = Some(vec!["ksg".into()]),
        Gateway::RsaPem => settings.keys = file("rsa", include_bytes!("testdata/rsa-public.pem")),
        Gateway::Jwks => {
            let point = keys.ec.public_key_raw();
            let jwks = json!({"keys": [
                {"kty": "EC", "crv": "P-256", "kid": "ec-1",
                 "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])},
                {"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "alg": "EdDSA",
                 "x": B64.encode(keys.ed.public_key_raw())},
            ]});
            settings.keys = file("jwks", jwks.to_string().as_bytes());
        }
    }
    let auth = Authorizer::new(settings.clone()).unwrap();
    if let KeySource::File(path) = settings.keys {
        let _ = std::fs::remove_file(path);
    }
    auth
}

/// The token of `shape`: its header and claims as written, signed by its signer with the
/// header's `alg` (HS256 when it names none the signer can use).
fn token(shape: &Shape, keys: &Keys) -> String {
    let signing_input = format!(
        "{}.{}",
        B64.encode(shape.header.to_string()),
        B64.encode(shape.claims.to_string())
    );
    let alg = shape
        .header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(|a| a.parse::<Algorithm>().ok());
    let pem = |pair: &rcgen::KeyPair| pair.serialize_pem();
    let (key, alg) = match shape.signer {
        Signer::Nothing => return format!("{signing_input}."),
        Signer::Secret => (EncodingKey::from_secret(SECRET), Algorithm::HS256),
        Signer::OtherSecret => (
            EncodingKey::from_secret(b"another secret of at least 32 bytes!"),
            Algorithm::HS256,
        ),
        Signer::RsaPublicAsSecret => (
            EncodingKey::from_secret(include_bytes!("testdata/rsa-public.pem")),
            Algorithm::HS256,
        ),
        Signer::Rsa => (
            EncodingKey::from_rsa_pem(include_bytes!("testdata/rsa-private.pem")).unwrap(),
            alg.unwrap(),
        ),
        Signer::Ec => (
            EncodingKey::from_ec_pem(pem(&keys.ec).as_bytes()).unwrap(),
            Algorithm::ES256,
        ),
        Signer::OtherEc => (
            EncodingKey::from_ec_pem(pem(&keys.other_ec).as_bytes()).unwrap(),
            Algorithm::ES256,
        ),
        Signer::Ed => (
            EncodingKey::from_ed_pem(pem(&keys.ed).as_bytes()).unwrap(),
            Algorithm::EdDSA,
        ),
    };
    // A header naming HS384/HS512 is signed with that HMAC: the refusal is then the
    // algorithm's, not the signature's.
    let alg = match (alg, shape.signer) {
        (Algorithm::HS256, Signer::Secret) => match shape.header.get("alg").and_then(Value::as_str)
        {
            Some("HS512") => Algorithm::HS512,
            _ => Algorithm::HS256,
        },
        (alg, _) => alg,
    };
    let signature = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, alg).unwrap();
    format!("{signing_input}.{signature}")
}

#[test]
fn every_token_shape_gets_the_answer_the_standards_call_for() {
    let keys = Keys::new();
    let shapes = shapes();
    assert!(shapes.len() >= 40, "{} shapes", shapes.len());
    let gateways = [
        Gateway::Secret,
        Gateway::SecretAudience,
        Gateway::RsaPem,
        Gateway::Jwks,
    ]
    .map(|g| gateway(g, &keys));
    let mut wrong = Vec::new();
    for shape in &shapes {
        let auth = &gateways[shape.gateway as usize];
        let got = auth.verify(&token(shape, &keys), NOW).map(|grant| {
            assert!(grant.allows("/stock-prices/GOOG"), "{}", shape.name);
        });
        if got != shape.expect {
            wrong.push(format!(
                "{} ({:?}, {:?}): expected {:?}, got {:?}",
                shape.name, shape.gateway, shape.signer, shape.expect, got
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} shapes:\n{}",
        wrong.len(),
        shapes.len(),
        wrong.join("\n")
    );
}

#[test]
fn a_fractional_exp_ends_the_stream_at_the_last_whole_second_before_it() {
    let keys = Keys::new();
    let shape = Shape {
        name: "exp with a fraction",
        gateway: Gateway::Secret,
        signer: Signer::Secret,
        header: hs256(),
        claims: with(json!({"exp": NOW as f64 + 600.5})),
        expect: Ok(()),
    };
    let grant = gateway(Gateway::Secret, &keys)
        .verify(&token(&shape, &keys), NOW)
        .unwrap();
    assert_eq!(grant.expires, NOW + 600);
}
