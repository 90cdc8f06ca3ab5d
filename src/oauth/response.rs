//! Reading token responses (RFC 6749 5.1 and the non-standard shapes vendors use) and
//! classifying error responses (RFC 6749 5.2, HTML error pages, empty bodies, 429/503 with
//! Retry-After).

use std::time::Duration;

use base64::Engine;
use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::config::ResponseMapping;
use super::error::{ErrorKind, Redactor, TokenError, excerpt};
use super::transport::HttpResponse;

/// Lifetimes beyond this are treated as malformed (a year, generously).
const MAX_LIFETIME_SECS: f64 = 366.0 * 86400.0;

/// Where a token's expiry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpirySource {
    ExpiresIn,
    ExpiresAt,
    JwtExp,
    DefaultLifetime,
}

/// An access token as the server issued it.
#[derive(Debug, Clone)]
pub struct Token {
    pub access_token: SecretString,
    /// Normalised: any case of "bearer" becomes "Bearer" (RFC 6749 7.1 makes it
    /// case-insensitive; resource servers expect the canonical spelling).
    pub token_type: String,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub expiry_source: ExpirySource,
    /// The granted scope, when the server stated it.
    pub scope: Option<String>,
    /// A refresh token the server returned with this token (new or rotated).
    pub refresh_token: Option<SecretString>,
    /// RFC 8693 2.2.1: the type of the token a token exchange issued, e.g.
    /// urn:ietf:params:oauth:token-type:access_token.
    pub issued_token_type: Option<String>,
    /// RFC 8705 3.1: the `x5t#S256` thumbprint of the certificate the token is bound to,
    /// from the response's `cnf` member or, for a JWT access token, its `cnf` claim.
    pub bound_certificate: Option<String>,
}

/// Parses a response to a token or refresh request. `now` is when the request was sent:
/// expires_in counts from the server's answer, so starting from the request is the
/// conservative choice.
pub fn parse(
    response: &HttpResponse,
    mapping: &ResponseMapping,
    now: Timestamp,
    redactor: &Redactor,
) -> Result<Token, TokenError> {
    if !(200..300).contains(&response.status) {
        return Err(classify_error(response, now, redactor));
    }
    let body: Value = match serde_json::from_slice(&response.body) {
        Ok(v) => v,
        Err(_) if response.body.iter().all(u8::is_ascii_whitespace) => {
            return Err(TokenError::invalid_response(format!("HTTP {} with an empty body", response.status)));
        }
        Err(_) => {
            return Err(TokenError::invalid_response(format!(
                "HTTP {} with a body that is not JSON: {}",
                response.status,
                excerpt(&response.body, redactor)
            )));
        }
    };
    // Some servers answer 200 with an RFC 6749 5.2 error body.
    if let Some(code) = body.get("error").and_then(Value::as_str) {
        return Err(oauth_error(response.status, code, &body, redactor));
    }
    if !body.is_object() {
        return Err(TokenError::invalid_response("the token response is not a JSON object"));
    }
    let access_token = match lookup(&body, &mapping.access_token) {
        Some(Value::String(s)) if !s.trim().is_empty() => SecretString::from(s.trim().to_owned()),
        Some(_) => {
            return Err(TokenError::invalid_response(format!(
                "the response field {} is not a non-empty string",
                mapping.access_token
            )));
        }
        None => {
            return Err(TokenError::invalid_response(format!(
                "the response has no {} field (fields present: {}); set spec.response.accessTokenField if the \
                 token is elsewhere",
                mapping.access_token,
                field_names(&body)
            )));
        }
    };
    let token_type = match lookup(&body, &mapping.token_type).and_then(Value::as_str) {
        None => "Bearer".to_owned(),
        Some(t) if t.eq_ignore_ascii_case("bearer") => "Bearer".to_owned(),
        Some(t) if !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_graphic()) => t.to_owned(),
        Some(_) => return Err(TokenError::invalid_response("the response's token_type is not a valid token type")),
    };
    let (expires_at, expiry_source) = expiry(&body, mapping, access_token.expose_secret(), now, redactor)?;
    if expires_at <= now {
        return Err(TokenError::invalid_response(format!("the token is already expired (expires at {expires_at})")));
    }
    let scope = lookup(&body, "scope").and_then(Value::as_str).map(str::to_owned).filter(|s| !s.is_empty());
    let refresh_token = match lookup(&body, &mapping.refresh_token) {
        Some(Value::String(s)) if !s.is_empty() => Some(SecretString::from(s.clone())),
        _ => None,
    };
    let issued_token_type =
        lookup(&body, "issued_token_type").and_then(Value::as_str).map(str::to_owned).filter(|s| !s.is_empty());
    let bound_certificate = x5t_s256(body.get("cnf"))
        .or_else(|| jwt_claims(access_token.expose_secret()).and_then(|c| x5t_s256(c.get("cnf"))));
    Ok(Token {
        access_token,
        token_type,
        issued_at: now,
        expires_at,
        expiry_source,
        scope,
        refresh_token,
        issued_token_type,
        bound_certificate,
    })
}

/// Expiry from, in order: the lifetime field, the absolute expiry field, the JWT exp claim,
/// the configured default lifetime.
fn expiry(
    body: &Value,
    mapping: &ResponseMapping,
    token: &str,
    now: Timestamp,
    redactor: &Redactor,
) -> Result<(Timestamp, ExpirySource), TokenError> {
    if let Some(value) = lookup(body, &mapping.expires_in).filter(|v| !v.is_null()) {
        let secs = number(value).filter(|s| *s > 0.0 && *s <= MAX_LIFETIME_SECS).ok_or_else(|| {
            TokenError::invalid_response(format!(
                "the response's {} is not a positive number of seconds: {}",
                mapping.expires_in,
                short_json(value, redactor)
            ))
        })?;
        return Ok((now + Duration::from_secs_f64(secs), ExpirySource::ExpiresIn));
    }
    if let Some(value) = lookup(body, &mapping.expires_at).filter(|v| !v.is_null()) {
        let at = absolute_time(value).ok_or_else(|| {
            TokenError::invalid_response(format!(
                "the response's {} is neither RFC 3339 nor epoch seconds: {}",
                mapping.expires_at,
                short_json(value, redactor)
            ))
        })?;
        return Ok((at, ExpirySource::ExpiresAt));
    }
    if let Some(exp) = jwt_exp(token) {
        return Ok((exp, ExpirySource::JwtExp));
    }
    if let Some(lifetime) = mapping.default_lifetime {
        // Bounded like expires_in: a lifetime past what a timestamp can hold must be an
        // error, not an overflow.
        let at = Some(lifetime)
            .filter(|l| l.as_secs_f64() <= MAX_LIFETIME_SECS)
            .and_then(|l| now.checked_add(l).ok())
            .ok_or_else(|| TokenError::invalid_response("spec.response.defaultLifetime is longer than 366 days"))?;
        return Ok((at, ExpirySource::DefaultLifetime));
    }
    Err(TokenError::invalid_response(format!(
        "the response states no lifetime ({} or {}) and the token is not a JWT with exp; set \
         spec.response.defaultLifetime",
        mapping.expires_in, mapping.expires_at
    )))
}

/// A number or a numeric string ("3600", "3600.0").
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

/// RFC 3339, or epoch seconds (milliseconds when the number is too large to be seconds).
fn absolute_time(value: &Value) -> Option<Timestamp> {
    if let Some(s) = value.as_str()
        && let Ok(t) = s.trim().parse::<Timestamp>()
    {
        return Some(t);
    }
    let n = number(value)?;
    let secs = if n > 1e11 { n / 1000.0 } else { n };
    Timestamp::from_second(secs as i64).ok()
}

/// The exp claim of a JWT, read without verifying the signature: only the expiry is taken
/// from it, as a fallback when the response states none.
pub fn jwt_exp(token: &str) -> Option<Timestamp> {
    let claims = jwt_claims(token)?;
    Timestamp::from_second(number(claims.get("exp")?)? as i64).ok()
}

/// The claims of a JWT, unverified; None when the token is not a JWT.
fn jwt_claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > 64 * 1024 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `cnf.x5t#S256` (RFC 8705 3.1): a base64url SHA-256, 43 characters.
fn x5t_s256(cnf: Option<&Value>) -> Option<String> {
    let value = cnf?.get("x5t#S256")?.as_str()?;
    let valid = value.len() == 43 && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then(|| value.to_owned())
}

/// Follows a dotted path (`data.accessToken`) into nested objects.
fn lookup<'a>(body: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(v) = body.get(path) {
        return Some(v);
    }
    path.split('.').try_fold(body, |v, key| v.get(key))
}

fn field_names(body: &Value) -> String {
    let names: Vec<&str> =
        body.as_object().map(|o| o.keys().map(String::as_str).take(20).collect()).unwrap_or_default();
    if names.is_empty() { "none".into() } else { names.join(", ") }
}

/// A JSON value for a message: values are not secrets here (lifetimes, dates), but keep
/// them short.
fn short_json(value: &Value, redactor: &Redactor) -> String {
    // A server may put anything there, including the request it was sent: redact before
    // shortening, so that no prefix of a secret survives the cut.
    let s = match value {
        Value::String(v) => Value::String(redactor.redact(v)).to_string(),
        other => redactor.redact(&other.to_string()),
    };
    if s.len() > 64 { format!("{}…", &s[..s.floor_char_boundary(64)]) } else { s }
}

/// Classifies a non-2xx response.
pub fn classify_error(response: &HttpResponse, now: Timestamp, redactor: &Redactor) -> TokenError {
    let status = response.status;
    let retry_after = retry_after(&response.headers, now);
    let json: Option<Value> = serde_json::from_slice(&response.body).ok();
    let mut error = match json.as_ref().and_then(|b| b.get("error").and_then(Value::as_str).map(|c| (b, c))) {
        Some((body, code)) => oauth_error(status, code, body, redactor),
        None => {
            let (kind, permanent) = status_class(status);
            let detail = if response.body.iter().all(u8::is_ascii_whitespace) {
                "empty body".to_owned()
            } else {
                excerpt(&response.body, redactor)
            };
            let mut e = TokenError::new(kind, permanent, format!("HTTP {status}: {detail}"));
            e.status = Some(status);
            e
        }
    };
    if retry_after.is_some() {
        error.retry_after = retry_after;
    }
    error
}

/// Which statuses are worth retrying: 408, 425, 429 and 5xx. Other 4xx mean the request
/// itself is wrong.
fn status_class(status: u16) -> (ErrorKind, bool) {
    match status {
        408 | 425 | 429 | 500..=599 => (ErrorKind::Unavailable, false),
        _ => (ErrorKind::Rejected, true),
    }
}

/// What an `invalid_client` answer asks the user to check, for a client with a secret.
pub const INVALID_CLIENT_HINT: &str = " (check client_id and client_secret, and spec.clientAuthentication)";
/// What an `invalid_grant` answer says, for a client with a refresh token, code or assertion.
pub const INVALID_GRANT_HINT: &str = " (the refresh token, authorization code or assertion was refused)";

/// An RFC 6749 5.2 error. Codes that mean "try again later" are transient whatever the
/// status; everything else the client sent wrong is permanent.
fn oauth_error(status: u16, code: &str, body: &Value, redactor: &Redactor) -> TokenError {
    let code: String = code.chars().filter(|c| !c.is_control()).take(64).collect();
    let description = body
        .get("error_description")
        .and_then(Value::as_str)
        .map(|d| redactor.redact(&d.chars().filter(|c| !c.is_control()).take(300).collect::<String>()));
    let (kind, permanent) = match code.as_str() {
        "temporarily_unavailable" | "server_error" | "slow_down" => (ErrorKind::Unavailable, false),
        _ if (500..=599).contains(&status) || status == 429 => (ErrorKind::Unavailable, false),
        _ => (ErrorKind::Rejected, true),
    };
    let hint = match code.as_str() {
        "invalid_client" => INVALID_CLIENT_HINT,
        "invalid_grant" => INVALID_GRANT_HINT,
        "invalid_scope" => " (check spec.scopes)",
        "unauthorized_client" => " (the client may not use this grant type)",
        "unsupported_grant_type" => " (the server does not support spec.grantType)",
        _ => "",
    };
    let message = match description {
        Some(d) if !d.is_empty() => format!("HTTP {status} {code}: {d}{hint}"),
        _ => format!("HTTP {status} {code}{hint}"),
    };
    let mut e = TokenError::new(kind, permanent, message);
    e.status = Some(status);
    e.oauth_error = Some(code);
    e
}

/// Retry-After as delay-seconds or an HTTP-date (RFC 9110 10.2.3).
pub fn retry_after(headers: &reqwest::header::HeaderMap, now: Timestamp) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    let at = Timestamp::try_from(date).ok()?;
    let delay = at.as_second() - now.as_second();
    Some(Duration::from_secs(delay.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    fn resp(status: u16, body: &str) -> HttpResponse {
        HttpResponse { status, headers: HeaderMap::new(), body: body.as_bytes().to_vec() }
    }

    fn now() -> Timestamp {
        "2026-11-22T10:00:00Z".parse().unwrap()
    }

    fn ok(body: &str) -> Token {
        parse(&resp(200, body), &ResponseMapping::default(), now(), &Redactor::default()).unwrap()
    }

    fn err(status: u16, body: &str) -> TokenError {
        parse(&resp(status, body), &ResponseMapping::default(), now(), &Redactor::default()).unwrap_err()
    }

    #[test]
    fn standard_response_is_read() {
        let t = ok(r#"{"access_token":"abc","token_type":"bearer","expires_in":300,"scope":"a b"}"#);
        assert_eq!(t.access_token.expose_secret(), "abc");
        assert_eq!(t.token_type, "Bearer");
        assert_eq!(t.expires_at, now() + Duration::from_secs(300));
        assert_eq!(t.scope.as_deref(), Some("a b"));
        assert_eq!(t.expiry_source, ExpirySource::ExpiresIn);
    }

    #[test]
    fn a_certificate_binding_is_read_from_the_response_or_the_jwt_cnf_claim() {
        let x5t = "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2";
        let t = ok(&format!(r#"{{"access_token":"opaque","expires_in":60,"cnf":{{"x5t#S256":"{x5t}"}}}}"#));
        assert_eq!(t.bound_certificate.as_deref(), Some(x5t));
        let exp = now().as_second() + 600;
        let claims = format!(r#"{{"exp":{exp},"cnf":{{"x5t#S256":"{x5t}"}}}}"#);
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims);
        let t = ok(&format!(r#"{{"access_token":"eyJhbGciOiJSUzI1NiJ9.{payload}.sig","expires_in":60}}"#));
        assert_eq!(t.bound_certificate.as_deref(), Some(x5t));
        // Unbound tokens, and a cnf that is not a SHA-256 thumbprint, say nothing.
        assert_eq!(ok(r#"{"access_token":"a","expires_in":60}"#).bound_certificate, None);
        assert_eq!(ok(r#"{"access_token":"a","expires_in":60,"cnf":{"x5t#S256":"short"}}"#).bound_certificate, None);
        assert_eq!(ok(r#"{"access_token":"a","expires_in":60,"cnf":{"jkt":"x"}}"#).bound_certificate, None);
    }

    #[test]
    fn expires_in_may_be_a_string_or_a_float() {
        assert_eq!(ok(r#"{"access_token":"a","expires_in":"86400"}"#).expires_at, now() + Duration::from_secs(86400));
        assert_eq!(ok(r#"{"access_token":"a","expires_in":3599.0}"#).expires_at, now() + Duration::from_secs(3599));
    }

    #[test]
    fn expires_at_may_be_rfc3339_or_epoch() {
        let t = ok(r#"{"access_token":"a","expires_at":"2026-11-22T11:00:00Z"}"#);
        assert_eq!(t.expires_at, "2026-11-22T11:00:00Z".parse::<Timestamp>().unwrap());
        let epoch = now().as_second() + 600;
        assert_eq!(ok(&format!(r#"{{"access_token":"a","expires_at":{epoch}}}"#)).expires_at.as_second(), epoch);
        assert_eq!(
            ok(&format!(r#"{{"access_token":"a","expires_at":{}}}"#, epoch * 1000)).expires_at.as_second(),
            epoch
        );
    }

    #[test]
    fn jwt_exp_is_the_fallback_expiry() {
        let exp = now().as_second() + 900;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{exp}}}"#));
        let t = ok(&format!(r#"{{"access_token":"eyJhbGciOiJub25lIn0.{payload}.sig"}}"#));
        assert_eq!(t.expires_at.as_second(), exp);
        assert_eq!(t.expiry_source, ExpirySource::JwtExp);
    }

    #[test]
    fn default_lifetime_is_last_and_its_absence_is_an_error() {
        let e = err(200, r#"{"access_token":"opaque"}"#);
        assert_eq!(e.kind, ErrorKind::InvalidResponse);
        assert!(e.message.contains("defaultLifetime"));
        let mapping = ResponseMapping { default_lifetime: Some(Duration::from_secs(3600)), ..Default::default() };
        let t = parse(&resp(200, r#"{"access_token":"opaque"}"#), &mapping, now(), &Redactor::default()).unwrap();
        assert_eq!(t.expiry_source, ExpirySource::DefaultLifetime);
        // Found by the hostile-input proptest: a lifetime past what a timestamp holds
        // overflowed instead of failing.
        let huge = ResponseMapping { default_lifetime: Some(Duration::from_secs(u64::MAX / 2)), ..Default::default() };
        let e = parse(&resp(200, r#"{"access_token":"opaque"}"#), &huge, now(), &Redactor::default()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidResponse);
    }

    #[test]
    fn mapped_nested_fields_are_read() {
        let mapping = ResponseMapping {
            access_token: "data.accessToken".into(),
            expires_in: "data.ttl".into(),
            ..Default::default()
        };
        let body = r#"{"data":{"accessToken":"xyz","ttl":"60"}}"#;
        let t = parse(&resp(200, body), &mapping, now(), &Redactor::default()).unwrap();
        assert_eq!(t.access_token.expose_secret(), "xyz");
        assert_eq!(t.expires_at, now() + Duration::from_secs(60));
    }

    #[test]
    fn responses_without_a_usable_token_are_errors() {
        for body in [r#"{"token_type":"Bearer"}"#, r#"{"access_token":""}"#, r#"{"access_token":42}"#, "[1,2]", "null"]
        {
            assert_eq!(err(200, body).kind, ErrorKind::InvalidResponse, "{body}");
        }
        assert_eq!(err(200, r#"{"access_token":"a","expires_in":-5}"#).kind, ErrorKind::InvalidResponse);
        assert_eq!(err(200, r#"{"access_token":"a","expires_in":"soon"}"#).kind, ErrorKind::InvalidResponse);
        assert_eq!(err(200, "").kind, ErrorKind::InvalidResponse);
        assert!(err(200, "<html>oops</html>").message.contains("not JSON"));
    }

    #[test]
    fn oauth_errors_are_permanent_rejections_with_their_code() {
        for code in [
            "invalid_client",
            "invalid_grant",
            "invalid_scope",
            "unauthorized_client",
            "unsupported_grant_type",
            "invalid_request",
        ] {
            let e = err(400, &format!(r#"{{"error":"{code}","error_description":"nope"}}"#));
            assert_eq!((e.kind, e.permanent), (ErrorKind::Rejected, true), "{code}");
            assert_eq!(e.oauth_error.as_deref(), Some(code));
            assert!(e.message.contains(code) && e.message.contains("nope"));
        }
    }

    #[test]
    fn a_200_carrying_an_error_is_an_error() {
        let e = err(200, r#"{"error":"invalid_client"}"#);
        assert_eq!((e.kind, e.permanent), (ErrorKind::Rejected, true));
    }

    #[test]
    fn server_failures_are_transient() {
        for status in [500, 502, 503, 504, 429, 408] {
            let e = err(status, "<html><body>Bad Gateway</body></html>");
            assert_eq!((e.kind, e.permanent), (ErrorKind::Unavailable, false), "{status}");
        }
        let e = err(400, r#"{"error":"temporarily_unavailable"}"#);
        assert!(!e.permanent);
        let e = err(401, "");
        assert_eq!((e.kind, e.permanent), (ErrorKind::Rejected, true));
        assert!(e.message.contains("empty body"));
    }

    #[test]
    fn a_secret_echoed_as_a_malformed_lifetime_is_redacted() {
        let mut redactor = Redactor::default();
        redactor.add("s3cret-value");
        for body in [
            r#"{"access_token":"a","expires_in":"s3cret-value"}"#,
            r#"{"access_token":"a","expires_at":["s3cret-value"]}"#,
        ] {
            let e = parse(&resp(200, body), &ResponseMapping::default(), now(), &redactor).unwrap_err();
            assert!(!e.message.contains("s3cret-value") && e.message.contains("[redacted]"), "{}", e.message);
        }
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(retry_after(&headers, now()), Some(Duration::from_secs(120)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("Sun, 22 Nov 2026 10:01:30 GMT"));
        assert_eq!(retry_after(&headers, now()), Some(Duration::from_secs(90)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("whenever"));
        assert_eq!(retry_after(&headers, now()), None);
    }

    #[test]
    fn error_descriptions_are_redacted() {
        let mut r = Redactor::default();
        r.add("topsecret-value");
        let body = r#"{"error":"invalid_client","error_description":"bad secret topsecret-value"}"#;
        let e = parse(&resp(401, body), &ResponseMapping::default(), now(), &r).unwrap_err();
        assert!(!e.to_string().contains("topsecret-value"));
    }
}
