//! The proxy's own answers: refusals, `502` when the upstream cannot be reached, `503` while
//! there is no valid token. Small JSON documents written by tokensync: they never hold a
//! token (there is none in scope here) and never echo the request.

use std::time::SystemTime;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use jiff::Timestamp;
use serde_json::json;

use super::hygiene::Refusal;
use crate::agent::live::Live;

/// A response body: the upstream's, streamed, or one of ours.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// `Retry-After` bounds: never "retry at once" in a loop, never "come back in an hour" for
/// a condition that may clear any second.
const MIN_RETRY_AFTER: u64 = 1;
const MAX_RETRY_AFTER: u64 = 300;
/// When the next attempt is unknown (waiting for a configuration change).
const UNKNOWN_RETRY_AFTER: u64 = 30;

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    response.headers_mut().insert("cache-control", HeaderValue::from_static("no-store"));
    response
}

pub fn refused(refusal: Refusal) -> Response<ProxyBody> {
    let mut response = json_response(refusal.status(), json!({"error": refusal.code(), "message": refusal.message()}));
    if refusal.status() == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert("allow", HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"));
    }
    response
}

/// `502`: the upstream could not be reached or broke the exchange. `cause` is hyper's
/// description of the failure (connection refused, TLS, reset), which never includes headers.
pub fn bad_gateway(upstream: &str, cause: &str) -> Response<ProxyBody> {
    json_response(
        StatusCode::BAD_GATEWAY,
        json!({"error": "upstream_unavailable", "upstream": upstream, "message": cause}),
    )
}

/// `503` with `Retry-After`: credential `id` has no valid token now. Names the credential and
/// the reason; `Retry-After` is when the agent will next try (within bounds).
pub fn unavailable(id: &str, live: &Live, now: SystemTime) -> Response<ProxyBody> {
    let expired = live.token.as_ref().is_some_and(|t| !t.is_valid_at(now));
    let (reason, message) = match (&live.trouble, expired) {
        (Some(trouble), true) => (
            "Expired".to_owned(),
            format!("the token expired and no new one could be obtained: {} ({})", trouble.message, trouble.reason),
        ),
        (Some(trouble), false) => (trouble.reason.clone(), trouble.message.clone()),
        (None, true) => ("Expired".to_owned(), "the token expired; a new one is being requested".to_owned()),
        (None, false) => ("Pending".to_owned(), "no token has been issued yet".to_owned()),
    };
    let retry_after = match live.next_attempt {
        Some(at) => {
            let now = Timestamp::try_from(now).unwrap_or_else(|_| Timestamp::now());
            let wait = at.as_second().saturating_sub(now.as_second());
            (wait.max(0) as u64).clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER)
        }
        None => UNKNOWN_RETRY_AFTER,
    };
    let mut response = json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({
            "error": "no_valid_token",
            "credential": id,
            "reason": reason,
            "message": message,
            "retry_after_seconds": retry_after,
        }),
    );
    response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::live::Trouble;
    use std::time::Duration;

    #[test]
    fn the_503_names_the_credential_and_reason_and_bounds_retry_after() {
        let now = SystemTime::now();
        let live = Live {
            token: None,
            trouble: Some(Trouble { reason: "TokenEndpointUnavailable".into(), message: "refused".into() }),
            next_attempt: Some(Timestamp::try_from(now).unwrap() + Duration::from_secs(7)),
        };
        let response = unavailable("team-a/demo", &live, now);
        assert_eq!(response.status(), 503);
        let retry: u64 = response.headers()[RETRY_AFTER].to_str().unwrap().parse().unwrap();
        assert!((6..=7).contains(&retry), "{retry}");
        let far = Live { next_attempt: Some(Timestamp::now() + Duration::from_secs(86_400)), ..live.clone() };
        assert_eq!(unavailable("team-a/demo", &far, now).headers()[RETRY_AFTER], "300");
        let past = Live { next_attempt: Some(Timestamp::now() - Duration::from_secs(5)), ..live };
        assert_eq!(unavailable("team-a/demo", &past, now).headers()[RETRY_AFTER], "1");
    }
}
