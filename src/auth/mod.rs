//! Who may read what: JWT bearer tokens checked before any Kafka work.
//!
//! A token comes from `Authorization: Bearer`, else a cookie (`KSG_AUTH_COOKIE`, for browsers:
//! EventSource cannot set headers), else — only when `KSG_AUTH_QUERY_TOKEN=on` — the
//! `access_token` query parameter. It is verified with the configured keys ([`keys`]); a
//! header with `crit` (no extension is understood) or an unencoded payload is refused. Its
//! `exp` is required and strict, `nbf` is honoured with a small leeway (both NumericDates,
//! which may have a fraction; a claim of the wrong type is refused, never ignored), and
//! `iss`/`aud` are checked when configured. Its `ksg.subscribe` claim lists the path patterns the bearer may
//! stream ([`pattern`]); a stream ends at the token's `exp` ([`expiry`]).
//!
//! Tokens are never logged.

pub mod expiry;
pub mod keys;
pub mod pattern;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::Validation;
use parking_lot::RwLock;
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::Metrics;
use keys::{KeyError, KeyLife, KeySet};

/// How often a key file is checked for changes.
pub const KEYS_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Where verification keys come from. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An HS256 shared secret (`KSG_AUTH_JWT_SECRET`).
    Secret(Vec<u8>),
    /// A PEM public key or JWKS file (`KSG_AUTH_JWT_KEYS`), reloaded when it changes.
    File(PathBuf),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Secret(s) => write!(f, "Secret(<{} bytes>)", s.len()),
            KeySource::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// JWT authorization settings (`KSG_AUTH=jwt`).
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// The verification keys.
    pub keys: KeySource,
    /// Accepted `iss` values; `None`: not checked.
    pub issuer: Option<Vec<String>>,
    /// Accepted `aud` values; `None`: not checked.
    pub audience: Option<Vec<String>>,
    /// Cookie that may carry the token.
    pub cookie: Option<String>,
    /// Whether `?access_token=` is accepted.
    pub query_token: bool,
    /// Clock skew allowed for `nbf`.
    pub leeway: Duration,
    /// How long before `exp` a stream announces its end (`event: expiring`); zero: never.
    pub expiry_notice: Duration,
}

/// Why a request was refused. The reason is the metric label; the description the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No token in the request.
    Missing,
    /// Not a JWT, bad JSON, missing `exp`, or an unusable `Authorization` header.
    Malformed,
    /// The signature does not verify.
    BadSignature,
    /// `alg` is not one the key may verify.
    BadAlgorithm,
    /// No configured key matches the token's `kid`.
    UnknownKey,
    /// `exp` is past.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `aud` is not the configured audience.
    WrongAudience,
    /// A valid token that does not allow this path.
    Forbidden,
}

/// Every refusal reason, to pre-register the metric series.
pub const FAILURES: &[Failure] = &[
    Failure::Missing,
    Failure::Malformed,
    Failure::BadSignature,
    Failure::BadAlgorithm,
    Failure::UnknownKey,
    Failure::Expired,
    Failure::NotYetValid,
    Failure::WrongIssuer,
    Failure::WrongAudience,
    Failure::Forbidden,
];

impl Failure {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Missing => "missing_token",
            Failure::Malformed => "malformed_token",
            Failure::BadSignature => "bad_signature",
            Failure::BadAlgorithm => "bad_algorithm",
            Failure::UnknownKey => "unknown_key",
            Failure::Expired => "expired",
            Failure::NotYetValid => "not_yet_valid",
            Failure::WrongIssuer => "wrong_issuer",
            Failure::WrongAudience => "wrong_audience",
            Failure::Forbidden => "forbidden",
        }
    }

    /// The plain-text reason given to the client.
    pub fn description(self) -> &'static str {
        match self {
            Failure::Missing => {
                "an access token is required (Authorization: Bearer, or the cookie)"
            }
            Failure::Malformed => "the access token is malformed",
            Failure::BadSignature => "the access token's signature does not verify",
            Failure::BadAlgorithm => "the access token's algorithm is not accepted",
            Failure::UnknownKey => "the access token's key (kid) is unknown",
            Failure::Expired => "the access token has expired",
            Failure::NotYetValid => "the access token is not valid yet",
            Failure::WrongIssuer => "the access token's issuer is not accepted",
            Failure::WrongAudience => "the access token's audience is not accepted",
            Failure::Forbidden => "the access token does not allow this stream",
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750, 3).
    pub fn challenge(self) -> String {
        let error = match self {
            Failure::Missing => "invalid_request",
            Failure::Forbidden => "insufficient_scope",
            _ => "invalid_token",
        };
        format!(
            "Bearer realm=\"kafka-sse-gateway\", error=\"{error}\", error_description=\"{}\"",
            self.description()
        )
    }

    /// `403` for a valid token that does not allow the path; `401` for everything else.
    pub fn status(self) -> http::StatusCode {
        match self {
            Failure::Forbidden => http::StatusCode::FORBIDDEN,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }
}

/// What a valid token allows.
#[derive(Debug, Clone)]
pub struct Grant {
    /// `sub`, bound by `{sub}` in patterns.
    pub subject: Option<String>,
    /// The path patterns of `ksg.subscribe`.
    pub patterns: Vec<String>,
    /// `exp`, seconds since the Unix epoch.
    pub expires: u64,
    /// The key that verified the token: streams end when it leaves the key set.
    pub key: Arc<KeyLife>,
}

impl Grant {
    /// Whether the token allows streaming `path`.
    pub fn allows(&self, path: &str) -> bool {
        pattern::allows(&self.patterns, self.subject.as_deref(), path)
    }

    /// What the token allows of the stream a request for `path` with `query` opens: the path
    /// itself (every key of it), or, for a request that names keys (`key=` parameters), the
    /// path of each key below it (`/stock-prices/GOOG` for `/stock-prices?key=GOOG`). No
    /// parameter widens what the path alone allows: a key that does not decode is not allowed.
    ///
    /// A pattern may carry filters (`/orders?header.tenant={sub}`): the stream it allows gets
    /// them added to its own, so its reader sees only what they pass whatever it asks. Where
    /// patterns without filters allow the stream, none is added; otherwise the first matching
    /// pattern's filters are. A stream of several keys allowed under different filters is not
    /// allowed (each key may be asked for in a stream of its own). A pattern whose query is not
    /// only filters, or does not parse, allows nothing.
    pub fn allows_stream(&self, path: &str, query: Option<&str>) -> Access {
        let subject = self.subject.as_deref();
        let whole = pattern::grant(&self.patterns, subject, path);
        if whole == Some(None) {
            return Access::Allowed(None);
        }
        let granted = match self.grant_by_keys(path, query) {
            Some(None) => Some(None),
            by_key => whole.or(by_key),
        };
        match granted {
            None => Access::Denied,
            Some(None) => Access::Allowed(None),
            Some(Some(query)) => match pattern_filter(&query) {
                Some(filter) => Access::Allowed(Some(filter)),
                None => Access::Denied,
            },
        }
    }
}

impl Grant {
    /// What the patterns allow of a request for `path` naming keys (`key=` in `query`): the key
    /// path below `path` of each of them, with no filter when none needs one, with the one
    /// filter they need otherwise; `None` when no key is named, a key is not allowed, or two
    /// need different filters.
    fn grant_by_keys(&self, path: &str, query: Option<&str>) -> Option<Option<String>> {
        let subject = self.subject.as_deref();
        let mut keys = crate::routes::query_key_values(query).peekable();
        keys.peek()?;
        let mut found: Option<String> = None;
        for raw in keys {
            let granted = pattern::grant_below(&self.patterns, subject, path, raw)?;
            match (&found, granted) {
                (_, None) => {}
                (None, Some(query)) => found = Some(query),
                (Some(held), Some(query)) if *held == query => {}
                (Some(_), Some(_)) => return None,
            }
        }
        Some(found)
    }
}

/// The filters of a pattern's query; `None` when it has something else, or does not parse.
fn pattern_filter(query: &str) -> Option<crate::filter::Filter> {
    let only_filters = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .all(|pair| crate::filter::any_in(Some(pair)));
    if !only_filters {
        return None;
    }
    crate::filter::Filter::from_query(Some(query), usize::MAX).ok()?
}

/// What a token allows of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Nothing (403).
    Denied,
    /// The stream, with this filter added to its own (`None`: none).
    Allowed(Option<crate::filter::Filter>),
}

#[derive(Deserialize, Default)]
struct KsgClaim {
    #[serde(default)]
    subscribe: Vec<String>,
}

/// The claims of a token whose signature verified, checked by RFC 7519 (see [`check_claims`]).
type ClaimSet = serde_json::Map<String, serde_json::Value>;

/// Checks requests' tokens.
pub struct Authorizer {
    settings: AuthSettings,
    keys: RwLock<Arc<KeySet>>,
    /// The key file's contents when the keys in use were loaded at start.
    loaded: Option<Vec<u8>>,
    validation: Validation,
}

/// A key file could not be read or parsed at start.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {why}")]
pub struct LoadError {
    path: String,
    why: String,
}

impl Authorizer {
    /// An authorizer with the keys of `settings`, read now.
    pub fn new(settings: AuthSettings) -> Result<Authorizer, LoadError> {
        let (keys, loaded) = match &settings.keys {
            KeySource::Secret(secret) => (KeySet::secret(secret), None),
            KeySource::File(path) => {
                let (keys, bytes) = read_keys(path).map_err(|why| LoadError {
                    path: path.display().to_string(),
                    why,
                })?;
                (keys, Some(bytes))
            }
        };
        // Algorithms are set per key when verifying. The library checks the signature only:
        // it reads a claim of the wrong type as absent (a string `nbf` was ignored) and an
        // `iss` array as several issuers, so the claims are checked here (`check_claims`).
        let mut validation = Validation::default();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.iss = None;
        validation.set_required_spec_claims::<&str>(&[]);
        Ok(Authorizer {
            settings,
            keys: RwLock::new(Arc::new(keys)),
            loaded,
            validation,
        })
    }

    /// How many verification keys are loaded.
    pub fn key_count(&self) -> usize {
        self.current_keys().len()
    }

    fn current_keys(&self) -> Arc<KeySet> {
        self.keys.read().clone()
    }

    /// The settings this authorizer was made with.
    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// Finds the request's token and verifies it.
    pub fn check(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Grant, Failure> {
        let token = self.token(headers, query)?;
        self.verify(&token, now_secs())
    }

    /// The token of a request, by precedence: header, cookie, query parameter.
    fn token(&self, headers: &HeaderMap, query: Option<&str>) -> Result<String, Failure> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = value.to_str().map_err(|_| Failure::Malformed)?;
            let (scheme, token) = value.trim().split_once(' ').ok_or(Failure::Malformed)?;
            if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
                return Err(Failure::Malformed);
            }
            return Ok(token.trim().to_string());
        }
        if let Some(name) = &self.settings.cookie {
            if let Some(token) = cookie(headers, name) {
                return Ok(token);
            }
        }
        if self.settings.query_token {
            if let Some(token) = query_param(query, "access_token") {
                return Ok(token);
            }
        }
        Err(Failure::Missing)
    }

    /// Verifies `token` at `now` (seconds since the epoch).
    fn verify(&self, token: &str, now: u64) -> Result<Grant, Failure> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            if names_an_algorithm(token) {
                // `none`, or one this gateway never accepts (ES512, HS with no key...).
                Failure::BadAlgorithm
            } else {
                classify(e.kind())
            }
        })?;
        refuse_extensions(token)?;
        let keys = self.current_keys();
        let mut last = None;
        for key in keys.candidates(header.kid.as_deref(), header.alg) {
            let mut validation = self.validation.clone();
            validation.algorithms = key.algorithms.clone();
            match jsonwebtoken::decode::<ClaimSet>(token, &key.decoding, &validation) {
                Ok(data) => return self.check_claims(data.claims, now, &key.life),
                Err(e) => {
                    let failure = classify(e.kind());
                    if failure != Failure::BadSignature {
                        return Err(failure);
                    }
                    last = Some(failure);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            let family_known = keys.candidates(None, header.alg).next().is_some();
            if family_known {
                Failure::UnknownKey
            } else {
                Failure::BadAlgorithm
            }
        }))
    }

    /// The grant of a verified token's claims at `now` (seconds since the epoch), by RFC 7519:
    /// - `exp` is required and strict (a stream never outlives its token, and a token that
    ///   ended a stream cannot open another); `nbf` is honoured with the leeway; both, and
    ///   `iat`, are NumericDates: JSON numbers, which may have a fraction (§2). Any other type
    ///   makes the token malformed, never a claim ignored.
    /// - `iss` is one string (§4.1.1) and `sub` one string; `aud` one string or an array of
    ///   strings (§4.1.3). The configured issuers and audiences, when there are some, require
    ///   the claim and one of their values.
    fn check_claims(
        &self,
        mut claims: ClaimSet,
        now: u64,
        key: &Arc<KeyLife>,
    ) -> Result<Grant, Failure> {
        let now = now as f64;
        let exp = numeric_date(claims.get("exp"))?.ok_or(Failure::Malformed)?;
        let nbf = numeric_date(claims.get("nbf"))?;
        numeric_date(claims.get("iat"))?;
        let iss = one_string(claims.get("iss"))?;
        let sub = one_string(claims.get("sub"))?.map(str::to_string);
        let aud = match claims.get("aud") {
            None => Vec::new(),
            Some(serde_json::Value::String(aud)) => vec![aud.as_str()],
            Some(serde_json::Value::Array(auds)) => auds
                .iter()
                .map(|aud| aud.as_str().ok_or(Failure::Malformed))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(Failure::Malformed),
        };
        if exp <= now {
            return Err(Failure::Expired);
        }
        if nbf.is_some_and(|nbf| nbf > now + self.settings.leeway.as_secs_f64()) {
            return Err(Failure::NotYetValid);
        }
        if let Some(issuers) = &self.settings.issuer {
            if !iss.is_some_and(|iss| issuers.iter().any(|i| i == iss)) {
                return Err(Failure::WrongIssuer);
            }
        }
        if let Some(audiences) = &self.settings.audience {
            if !aud.iter().any(|aud| audiences.iter().any(|a| a == aud)) {
                return Err(Failure::WrongAudience);
            }
        }
        let ksg: KsgClaim = match claims.remove("ksg") {
            Some(ksg) => serde_json::from_value(ksg).map_err(|_| Failure::Malformed)?,
            None => KsgClaim::default(),
        };
        Ok(Grant {
            subject: sub,
            patterns: ksg.subscribe,
            // A stream ends at the last whole second before `exp`.
            expires: exp.floor() as u64,
            key: key.clone(),
        })
    }

    /// Checks the key file every `every` ([`KEYS_CHECK_EVERY`] in a gateway) and loads it again
    /// when it changed. A file that no longer parses keeps the keys in use (logged, counted).
    pub async fn watch_keys(
        self: Arc<Self>,
        every: Duration,
        metrics: Metrics,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let KeySource::File(path) = self.settings.keys.clone() else {
            return;
        };
        let mut seen = self.loaded.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = crate::stopped(&mut shutdown) => return,
            }
            let file = path.clone();
            let read = tokio::task::spawn_blocking(move || std::fs::read(file)).await;
            let read = read.unwrap_or_else(|e| Err(std::io::Error::other(e)));
            let now = match read {
                Ok(bytes) => bytes,
                Err(e) => {
                    if seen.is_some() {
                        warn!(path = %path.display(), "cannot read the JWT key file, keeping the keys in use: {e}");
                        metrics.auth_key_reloads.with_label_values(&["error"]).inc();
                    }
                    seen = None;
                    continue;
                }
            };
            if seen.as_ref() == Some(&now) {
                continue;
            }
            match KeySet::parse(&now) {
                Ok(mut keys) => {
                    info!(path = %path.display(), keys = keys.len(), skipped = keys.skipped, "JWT keys reloaded");
                    let mut current = self.keys.write();
                    // Keys still in the file keep their streams; those gone are revoked,
                    // and the streams their tokens opened end.
                    let revoked = keys.replace(&current);
                    *current = Arc::new(keys);
                    drop(current);
                    if revoked > 0 {
                        warn!(path = %path.display(), revoked, "JWT keys left the key set: the streams their tokens opened end now");
                    }
                    metrics.auth_key_reloads.with_label_values(&["ok"]).inc();
                }
                Err(e) => {
                    warn!(path = %path.display(), "the JWT key file changed but is not usable, keeping the keys in use: {e}");
                    metrics.auth_key_reloads.with_label_values(&["error"]).inc();
                }
            }
            seen = Some(now);
        }
    }
}

fn read_keys(path: &std::path::Path) -> Result<(KeySet, Vec<u8>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let keys = KeySet::parse(&bytes).map_err(|e: KeyError| e.to_string())?;
    if keys.skipped > 0 {
        warn!(path = %path.display(), skipped = keys.skipped, "JWKS keys that cannot verify signatures were skipped");
    }
    Ok((keys, bytes))
}

/// Whether a token whose header did not parse names an algorithm this gateway does not know
/// (`none`, ES512, ...): it is then its algorithm that was refused, not its form.
fn names_an_algorithm(token: &str) -> bool {
    use base64::Engine;
    let Some(header) = token.split('.').next() else {
        return false;
    };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&json)
        .ok()
        .and_then(|v| {
            let alg = v.get("alg")?.as_str()?.to_string();
            Some(alg.parse::<jsonwebtoken::Algorithm>().is_err())
        })
        .unwrap_or(false)
}

/// Refuses a token whose header asks for what the gateway does not implement: any `crit`
/// (RFC 7515 §4.1.11: a recipient that does not understand every extension it lists must
/// refuse the token, and the gateway understands none), and an unencoded payload (`b64`
/// other than true, RFC 7797), whose signature covers other bytes than those verified here.
fn refuse_extensions(token: &str) -> Result<(), Failure> {
    use base64::Engine;
    let header = token.split('.').next().unwrap_or_default();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| Failure::Malformed)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&json).map_err(|_| Failure::Malformed)?;
    if header.contains_key("crit") {
        return Err(Failure::Malformed);
    }
    match header.get("b64") {
        None | Some(serde_json::Value::Bool(true)) => Ok(()),
        Some(_) => Err(Failure::Malformed),
    }
}

/// A NumericDate claim (RFC 7519 §2: seconds since the epoch, a JSON number, which may have a
/// fraction): `None` when absent, malformed when of another type.
fn numeric_date(value: Option<&serde_json::Value>) -> Result<Option<f64>, Failure> {
    match value {
        None => Ok(None),
        Some(serde_json::Value::Number(n)) => n
            .as_f64()
            .filter(|n| n.is_finite())
            .map(Some)
            .ok_or(Failure::Malformed),
        Some(_) => Err(Failure::Malformed),
    }
}

/// A claim that is one string when present (`iss`, `sub`).
fn one_string(value: Option<&serde_json::Value>) -> Result<Option<&str>, Failure> {
    match value {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Failure::Malformed),
    }
}

fn classify(kind: &ErrorKind) -> Failure {
    match kind {
        ErrorKind::InvalidSignature => Failure::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Failure::BadAlgorithm,
        ErrorKind::ExpiredSignature => Failure::Expired,
        ErrorKind::ImmatureSignature => Failure::NotYetValid,
        ErrorKind::InvalidIssuer => Failure::WrongIssuer,
        ErrorKind::InvalidAudience => Failure::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => Failure::WrongIssuer,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => Failure::WrongAudience,
        _ => Failure::Malformed,
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The value of cookie `name` in the request's `Cookie` fields (HTTP/2 may send several).
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// A query parameter, percent-decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == name).then(|| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod shapes;
#[cfg(test)]
mod tests;
