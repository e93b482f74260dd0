//! Token checks with real keys: HS256 secrets, RSA and EC PEM keys, Ed25519 and EC JWKS, and the
//! attacks a gateway must refuse (algorithm confusion, `none`, forged `kid`, expired tokens).
//! `testdata/rsa-*.pem` is a throwaway key pair made for these tests only.

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use http::HeaderValue;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn settings(keys: KeySource) -> AuthSettings {
    AuthSettings {
        keys,
        issuer: None,
        audience: None,
        cookie: Some("ksg_token".into()),
        query_token: false,
        leeway: Duration::from_secs(30),
        expiry_notice: Duration::from_secs(30),
    }
}

fn hs(claims: serde_json::Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn claims(exp: u64) -> serde_json::Value {
    json!({"exp": exp, "sub": "alice", "ksg": {"subscribe": ["/orders/{sub}", "/stock-prices/*"]}})
}

fn secret_auth() -> Authorizer {
    Authorizer::new(settings(KeySource::Secret(SECRET.to_vec()))).unwrap()
}

fn file_auth(name: &str, contents: &[u8]) -> Authorizer {
    let dir = std::env::temp_dir().join(format!("ksg-auth-{}-{name}", std::process::id()));
    std::fs::write(&dir, contents).unwrap();
    let a = Authorizer::new(settings(KeySource::File(dir.clone()))).unwrap();
    let _ = std::fs::remove_file(dir);
    a
}

#[test]
fn a_valid_hs256_token_grants_its_patterns() {
    let grant = secret_auth()
        .verify(&hs(claims(now_secs() + 60)), now_secs())
        .unwrap();
    assert_eq!(grant.expires, now_secs() + 60);
    assert!(grant.allows("/orders/alice"));
    assert!(!grant.allows("/orders/bob"));
    assert!(grant.allows("/stock-prices/GOOG"));
    assert!(!grant.allows("/stock-prices"));
}

#[test]
fn a_token_without_ksg_claims_allows_nothing() {
    let grant = secret_auth()
        .verify(&hs(json!({"exp": now_secs() + 60, "sub": "a"})), now_secs())
        .unwrap();
    assert!(!grant.allows("/orders/a"));
}

#[test]
fn expiry_is_strict_and_nbf_has_leeway() {
    let a = secret_auth();
    assert_eq!(
        a.verify(&hs(claims(now_secs())), now_secs()).unwrap_err(),
        Failure::Expired
    );
    // Within the leeway the token library would accept it; exp is strict here.
    assert_eq!(
        a.verify(&hs(claims(now_secs() - 5)), now_secs())
            .unwrap_err(),
        Failure::Expired
    );
    assert_eq!(
        a.verify(&hs(claims(now_secs() - 3600)), now_secs())
            .unwrap_err(),
        Failure::Expired
    );
    let soon = json!({"exp": now_secs() + 600, "nbf": now_secs() + 10});
    assert!(
        a.verify(&hs(soon), now_secs()).is_ok(),
        "nbf within the leeway"
    );
    let later = json!({"exp": now_secs() + 600, "nbf": now_secs() + 300});
    assert_eq!(
        a.verify(&hs(later), now_secs()).unwrap_err(),
        Failure::NotYetValid
    );
}

#[test]
fn exp_is_required() {
    let a = secret_auth();
    let token = hs(json!({"sub": "alice"}));
    assert_eq!(
        a.verify(&token, now_secs()).unwrap_err(),
        Failure::Malformed
    );
}

#[test]
fn wrong_secret_is_a_bad_signature_and_garbage_is_malformed() {
    let a = secret_auth();
    let other = encode(
        &Header::default(),
        &claims(now_secs() + 60),
        &EncodingKey::from_secret(b"another secret of at least 32 bytes!"),
    )
    .unwrap();
    assert_eq!(
        a.verify(&other, now_secs()).unwrap_err(),
        Failure::BadSignature
    );
    for garbage in ["", "a.b", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.e30"] {
        assert_eq!(
            a.verify(garbage, now_secs()).unwrap_err(),
            Failure::Malformed,
            "{garbage}"
        );
    }
}

#[test]
fn alg_none_is_refused() {
    let header = B64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = B64.encode(claims(now_secs() + 60).to_string());
    let token = format!("{header}.{body}.");
    assert_eq!(
        secret_auth().verify(&token, now_secs()).unwrap_err(),
        Failure::BadAlgorithm
    );
    let es512 = format!("{}.{body}.c2ln", B64.encode(br#"{"alg":"ES512"}"#));
    assert_eq!(
        secret_auth().verify(&es512, now_secs()).unwrap_err(),
        Failure::BadAlgorithm
    );
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let mut s = settings(KeySource::Secret(SECRET.to_vec()));
    s.issuer = Some(vec!["https://id.example".into()]);
    s.audience = Some(vec!["ksg".into()]);
    let a = Authorizer::new(s).unwrap();
    let ok = json!({"exp": now_secs() + 60, "iss": "https://id.example", "aud": "ksg"});
    assert!(a.verify(&hs(ok), now_secs()).is_ok());
    let bad_iss = json!({"exp": now_secs() + 60, "iss": "https://evil", "aud": "ksg"});
    assert_eq!(
        a.verify(&hs(bad_iss), now_secs()).unwrap_err(),
        Failure::WrongIssuer
    );
    let no_iss = json!({"exp": now_secs() + 60, "aud": "ksg"});
    assert_eq!(
        a.verify(&hs(no_iss), now_secs()).unwrap_err(),
        Failure::WrongIssuer
    );
    let bad_aud = json!({"exp": now_secs() + 60, "iss": "https://id.example", "aud": "other"});
    assert_eq!(
        a.verify(&hs(bad_aud), now_secs()).unwrap_err(),
        Failure::WrongAudience
    );
}

#[test]
fn rsa_pem_verifies_rs256_and_refuses_hs256_made_with_the_public_key() {
    let public = include_bytes!("testdata/rsa-public.pem");
    let private = include_bytes!("testdata/rsa-private.pem");
    let a = file_auth("rsa", public);
    let key = EncodingKey::from_rsa_pem(private).unwrap();
    for alg in [Algorithm::RS256, Algorithm::PS384] {
        let token = encode(&Header::new(alg), &claims(now_secs() + 60), &key).unwrap();
        assert!(a.verify(&token, now_secs()).is_ok(), "{alg:?}");
    }
    // Algorithm confusion: an HMAC keyed with the public key's bytes.
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &claims(now_secs() + 60),
        &EncodingKey::from_secret(public),
    )
    .unwrap();
    assert_eq!(
        a.verify(&forged, now_secs()).unwrap_err(),
        Failure::BadAlgorithm
    );
}

use jsonwebtoken::Algorithm;

fn ec_pair() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

#[test]
fn ec_pem_verifies_es256_only_with_its_own_key() {
    let pair = ec_pair();
    let a = file_auth("ec", pair.public_key_pem().as_bytes());
    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let token = encode(
        &Header::new(Algorithm::ES256),
        &claims(now_secs() + 60),
        &key,
    )
    .unwrap();
    assert!(a.verify(&token, now_secs()).is_ok());
    let other = ec_pair();
    let key = EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap();
    let token = encode(
        &Header::new(Algorithm::ES256),
        &claims(now_secs() + 60),
        &key,
    )
    .unwrap();
    assert_eq!(
        a.verify(&token, now_secs()).unwrap_err(),
        Failure::BadSignature
    );
}

#[test]
fn jwks_keys_are_chosen_by_kid_and_pinned_to_their_type() {
    let ec = ec_pair();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let point = ec.public_key_raw();
    let jwks = json!({"keys": [
        {"kty": "EC", "crv": "P-256", "kid": "ec-1", "use": "sig",
         "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "alg": "EdDSA",
         "x": B64.encode(ed.public_key_raw())},
        {"kty": "oct", "kid": "sym", "k": B64.encode(SECRET)},
        // Keys this gateway cannot use are skipped, not a reason to refuse the whole set.
        {"kty": "EC", "crv": "P-521", "kid": "big", "alg": "ES512",
         "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "enc", "alg": "RSA-OAEP-256", "n": "AQAB", "e": "AQAB"},
        {"kty": "OKP", "crv": "X25519", "kid": "dh", "x": "AA"},
        {"kty": "future-kind", "kid": "new"},
    ]});
    let a = file_auth("jwks", jwks.to_string().as_bytes());
    assert_eq!(
        a.key_count(),
        2,
        "the symmetric and unusable keys are skipped"
    );

    let ec_key = EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap();
    let ed_key = EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap();
    let signed = |alg, kid: Option<&str>, key: &EncodingKey| {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_string);
        encode(&h, &claims(now_secs() + 60), key).unwrap()
    };
    assert!(a
        .verify(&signed(Algorithm::ES256, Some("ec-1"), &ec_key), now_secs())
        .is_ok());
    assert!(a
        .verify(&signed(Algorithm::EdDSA, Some("ed-1"), &ed_key), now_secs())
        .is_ok());
    // Without a kid, every key of the token's algorithm is tried.
    assert!(a
        .verify(&signed(Algorithm::EdDSA, None, &ed_key), now_secs())
        .is_ok());
    assert_eq!(
        a.verify(&signed(Algorithm::ES256, Some("nope"), &ec_key), now_secs())
            .unwrap_err(),
        Failure::UnknownKey
    );
    // The symmetric JWK was skipped, so HS256 made with it is refused.
    let hs_token = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("sym".into());
        encode(
            &h,
            &claims(now_secs() + 60),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    };
    assert_eq!(
        a.verify(&hs_token, now_secs()).unwrap_err(),
        Failure::BadAlgorithm
    );
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[test]
fn the_token_comes_from_header_then_cookie_then_query_when_enabled() {
    let mut s = settings(KeySource::Secret(SECRET.to_vec()));
    let a = Authorizer::new(s.clone()).unwrap();
    let t = |h: &[(&str, &str)], q| a.token(&headers(h), q);
    assert_eq!(t(&[("authorization", "Bearer abc")], None).unwrap(), "abc");
    assert_eq!(
        t(&[("authorization", "bearer  abc ")], None).unwrap(),
        "abc"
    );
    assert_eq!(
        t(&[("authorization", "Basic abc")], None),
        Err(Failure::Malformed)
    );
    assert_eq!(
        t(&[("authorization", "Bearer")], None),
        Err(Failure::Malformed)
    );
    assert_eq!(
        t(&[("cookie", "a=1"), ("cookie", "ksg_token=xyz; b=2")], None).unwrap(),
        "xyz"
    );
    assert_eq!(
        t(
            &[("authorization", "Bearer h"), ("cookie", "ksg_token=c")],
            None
        )
        .unwrap(),
        "h"
    );
    assert_eq!(t(&[("cookie", "other=1")], None), Err(Failure::Missing));
    assert_eq!(
        t(&[], Some("access_token=q")),
        Err(Failure::Missing),
        "query off"
    );
    s.query_token = true;
    let a = Authorizer::new(s).unwrap();
    assert_eq!(
        a.token(&HeaderMap::new(), Some("from=earliest&access_token=q%2E1"))
            .unwrap(),
        "q.1"
    );
}

#[test]
fn challenges_follow_rfc_6750() {
    assert!(Failure::Missing
        .challenge()
        .starts_with("Bearer realm=\"kafka-sse-gateway\", error=\"invalid_request\""));
    assert!(Failure::Expired
        .challenge()
        .contains("error=\"invalid_token\""));
    assert!(Failure::Forbidden
        .challenge()
        .contains("error=\"insufficient_scope\""));
    assert_eq!(Failure::Forbidden.status(), http::StatusCode::FORBIDDEN);
    assert_eq!(Failure::Expired.status(), http::StatusCode::UNAUTHORIZED);
    for f in FAILURES {
        assert!(f.description().is_ascii() && !f.description().contains('"'));
    }
}

#[tokio::test]
async fn a_changed_key_file_is_loaded_again_and_a_broken_one_keeps_the_old_keys() {
    let every = Duration::from_millis(20);
    let path = std::env::temp_dir().join(format!("ksg-auth-reload-{}", std::process::id()));
    let first = ec_pair();
    std::fs::write(&path, first.public_key_pem()).unwrap();
    let a = Arc::new(Authorizer::new(settings(KeySource::File(path.clone()))).unwrap());
    let metrics = Metrics::new(&[]);
    let (_stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(a.clone().watch_keys(every, metrics.clone(), shutdown));
    let token_of = |pair: &rcgen::KeyPair| {
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        encode(
            &Header::new(Algorithm::ES256),
            &claims(now_secs() + 60),
            &key,
        )
        .unwrap()
    };
    let second = ec_pair();
    assert!(a.verify(&token_of(&first), now_secs()).is_ok());
    assert_eq!(
        a.verify(&token_of(&second), now_secs()).unwrap_err(),
        Failure::BadSignature
    );

    std::fs::write(&path, second.public_key_pem()).unwrap();
    let reloads = |r: &str| metrics.auth_key_reloads.with_label_values(&[r]).get();
    for _ in 0..1000 {
        if reloads("ok") == 1 {
            break;
        }
        tokio::time::sleep(every).await;
    }
    assert_eq!(reloads("ok"), 1);
    assert!(a.verify(&token_of(&second), now_secs()).is_ok());
    assert_eq!(
        a.verify(&token_of(&first), now_secs()).unwrap_err(),
        Failure::BadSignature
    );

    std::fs::write(&path, "not a key").unwrap();
    for _ in 0..1000 {
        if reloads("error") == 1 {
            break;
        }
        tokio::time::sleep(every).await;
    }
    assert_eq!(reloads("error"), 1);
    assert!(
        a.verify(&token_of(&second), now_secs()).is_ok(),
        "old keys kept"
    );
    task.abort();
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_reload_keeps_the_keys_still_there_and_revokes_those_gone() {
    let (a, b) = (ec_pair(), ec_pair());
    let jwk = |pair: &rcgen::KeyPair, kid: &str| {
        let point = pair.public_key_raw();
        json!({"kty": "EC", "crv": "P-256", "kid": kid,
               "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])})
    };
    let both = json!({"keys": [jwk(&a, "a"), jwk(&b, "b")]}).to_string();
    let old = keys::KeySet::parse(both.as_bytes()).unwrap();
    let life = |set: &keys::KeySet, kid: &str| {
        set.candidates(Some(kid), Algorithm::ES256)
            .next()
            .unwrap()
            .life
            .clone()
    };
    let (a_life, b_life) = (life(&old, "a"), life(&old, "b"));
    let mut new =
        keys::KeySet::parse(json!({"keys": [jwk(&b, "b")]}).to_string().as_bytes()).unwrap();
    assert_eq!(new.replace(&old), 1);
    assert!(a_life.is_revoked());
    assert!(!b_life.is_revoked());
    assert!(
        Arc::ptr_eq(&life(&new, "b"), &b_life),
        "a key still in the set keeps its streams"
    );
}

#[test]
fn a_pattern_with_filters_adds_them_to_every_stream_it_allows_and_nothing_removes_them() {
    let token = |patterns: serde_json::Value| {
        let claims = json!({"exp": now_secs() + 60, "sub": "a&b", "ksg": {"subscribe": patterns}});
        secret_auth().verify(&hs(claims), now_secs()).unwrap()
    };
    let filter = |q: &str| {
        Some(
            crate::filter::Filter::from_query(Some(q), 16)
                .unwrap()
                .unwrap(),
        )
    };
    let mine = filter("header.tenant=a%26b");
    let grant = token(json!([
        "/orders?header.tenant={sub}",
        "/orders/*?header.tenant={sub}"
    ]));
    // Whatever the request's parameters, the tenant test is added (the subject is matched as
    // it is, `&` and all).
    for query in [
        None,
        Some("header.tenant=other"),
        Some("header.tenant=a&header.tenant=b"),
        Some("where=/x=1"),
        Some("key=k"),
        Some("Header.tenant=x&header.Tenant=y"),
    ] {
        assert_eq!(
            grant.allows_stream("/orders", query),
            Access::Allowed(mine.clone()),
            "{query:?}"
        );
    }
    assert_eq!(
        grant.allows_stream("/orders/k", None),
        Access::Allowed(mine.clone())
    );
    assert_eq!(grant.allows_stream("/payments", None), Access::Denied);
    // A pattern without filters that also allows the stream: none is added.
    let open = token(json!(["/orders?header.tenant={sub}", "/orders/public"]));
    assert_eq!(
        open.allows_stream("/orders", Some("key=public")),
        Access::Allowed(None)
    );
    assert_eq!(
        open.allows_stream("/orders", Some("key=public&key=other")),
        Access::Allowed(mine.clone()),
        "other is allowed only through the filtered pattern: its filter holds for the stream"
    );
    // Keys allowed under different filters cannot share a stream.
    let split = token(json!(["/t/a?header.x=1", "/t/b?header.x=2", "/t/c"]));
    assert_eq!(
        split.allows_stream("/t", Some("key=a&key=c")),
        Access::Allowed(filter("header.x=1"))
    );
    assert_eq!(
        split.allows_stream("/t", Some("key=a&key=b")),
        Access::Denied
    );
    // A pattern whose query is not only filters, or does not parse, allows nothing; nor does
    // one naming {sub} in a token without a subject.
    for bad in ["/t?key=a", "/t?where=/a", "/t?header.x=1&format=plain"] {
        assert_eq!(
            token(json!([bad])).allows_stream("/t", None),
            Access::Denied,
            "{bad}"
        );
    }
    let claims = json!({"exp": now_secs() + 60, "ksg": {"subscribe": ["/t?header.u={sub}"]}});
    let anonymous = secret_auth().verify(&hs(claims), now_secs()).unwrap();
    assert_eq!(anonymous.allows_stream("/t", None), Access::Denied);
}
