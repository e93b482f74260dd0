//! CORS: which browser origins may open streams, and the preflight that lets a cross-origin
//! EventSource reconnect with `Last-Event-ID`.

use http::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_ORIGIN, VARY,
};
use http::HeaderMap;

/// Allowed origins from `KSG_CORS_ORIGINS`: exact origins, or `*` for any.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    any: bool,
    origins: Vec<String>,
}

impl Cors {
    /// Parses a comma-separated list; each item is `*` or `scheme://host[:port]`.
    pub fn parse(list: &str) -> Result<Cors, String> {
        let mut cors = Cors::default();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item == "*" {
                cors.any = true;
            } else if (item.starts_with("https://") || item.starts_with("http://"))
                && !item.ends_with('/')
                && HeaderValue::from_str(item).is_ok()
            {
                cors.origins.push(item.to_string());
            } else {
                return Err(format!(
                    "{item:?} is not * or an origin like https://app.example.com"
                ));
            }
        }
        Ok(cors)
    }

    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, if it is allowed.
    pub fn allow(&self, request: &HeaderMap) -> Option<HeaderValue> {
        if self.any {
            return Some(HeaderValue::from_static("*"));
        }
        let origin = request.get(http::header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        self.origins
            .iter()
            .any(|o| o == text)
            .then(|| origin.clone())
    }

    /// Adds the CORS headers of a response. A listed origin (not `*`) may send credentials:
    /// `EventSource(url, {withCredentials: true})` carries the token cookie across sites.
    pub fn apply(&self, request: &HeaderMap, response: &mut HeaderMap) {
        if let Some(value) = self.allow(request) {
            if !self.any {
                response.insert(
                    ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, value);
        }
        if !self.any && !self.origins.is_empty() {
            response.insert(VARY, HeaderValue::from_static("origin"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_origin(origin: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        h
    }

    #[test]
    fn exact_origins_and_any() {
        let cors = Cors::parse("https://a.example, http://localhost:3000").unwrap();
        assert_eq!(
            cors.allow(&with_origin("https://a.example")).unwrap(),
            "https://a.example"
        );
        assert!(cors.allow(&with_origin("https://b.example")).is_none());
        assert!(cors.allow(&HeaderMap::new()).is_none());
        assert_eq!(
            Cors::parse("*").unwrap().allow(&HeaderMap::new()).unwrap(),
            "*"
        );
        assert!(Cors::default()
            .allow(&with_origin("https://a.example"))
            .is_none());
    }

    #[test]
    fn listed_origins_may_send_credentials_any_may_not() {
        let mut response = HeaderMap::new();
        let cors = Cors::parse("https://a.example").unwrap();
        cors.apply(&with_origin("https://a.example"), &mut response);
        assert_eq!(response[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        let mut response = HeaderMap::new();
        Cors::parse("*")
            .unwrap()
            .apply(&with_origin("https://a.example"), &mut response);
        assert_eq!(response[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(response.get(ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
    }

    #[test]
    fn bad_items_are_refused() {
        for bad in ["a.example", "https://a.example/", "ftp://x"] {
            assert!(Cors::parse(bad).is_err(), "{bad}");
        }
    }
}
