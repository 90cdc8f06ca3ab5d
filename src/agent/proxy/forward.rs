//! One request through the proxy: refuse what an open proxy would forward, take the
//! credential's current token (or answer 503), forward with the token in place of any
//! credentials the caller sent, and pass the upstream's answer back as it streams in. A 401
//! `invalid_token` from the upstream asks for one early renewal (rate-limited); the 401
//! itself goes back to the caller, since a streamed request body cannot be replayed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{AUTHORIZATION, HOST, VIA};
use http::{Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;

use super::answer::{self, ProxyBody};
use super::challenge;
use super::hygiene::{self, HostPolicy};
use super::metrics::ProxyCounters;
use super::upstream::{Upstream, UpstreamClient};
use crate::agent::live::Slot;

/// Everything one proxy needs per request.
pub struct Forwarder {
    slot: Arc<Slot>,
    upstream: Upstream,
    client: UpstreamClient,
    hosts: HostPolicy,
    counters: Option<ProxyCounters>,
}

impl Forwarder {
    pub fn new(
        slot: Arc<Slot>,
        upstream: Upstream,
        client: UpstreamClient,
        hosts: HostPolicy,
        counters: Option<ProxyCounters>,
    ) -> Forwarder {
        Forwarder { slot, upstream, client, hosts, counters }
    }

    /// Serves one request; never fails (every failure is an answer).
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let (response, by_upstream, upstream_time) = self.forward(request).await;
        if let Some(counters) = &self.counters {
            counters.request(response.status().as_u16(), by_upstream);
            let total = started.elapsed();
            counters.added_latency(total.saturating_sub(upstream_time).as_secs_f64());
        }
        Ok(response)
    }

    /// The answer, whether the upstream gave it, and how long the upstream exchange took (up
    /// to the response head).
    async fn forward(&self, request: Request<Incoming>) -> (Response<ProxyBody>, bool, std::time::Duration) {
        let zero = std::time::Duration::ZERO;
        if let Err(refusal) = hygiene::check(&request, &self.hosts) {
            tracing::debug!(credential = self.slot.id(), method = %request.method(), refusal = refusal.code(), "request refused");
            return (answer::refused(refusal), false, zero);
        }
        let now = SystemTime::now();
        let token = match self.slot.token() {
            Some(token) if token.is_valid_at(now) => token,
            _ => return (answer::unavailable(self.slot.id(), &self.slot.live(), now), false, zero),
        };

        let (mut parts, body) = request.into_parts();
        let uri = match self.upstream.uri_for(&parts.uri) {
            Ok(uri) => uri,
            Err(_) => return (answer::refused(hygiene::Refusal::AbsoluteForm), false, zero),
        };
        let received = parts.version;
        hygiene::remove_hop_by_hop(&mut parts.headers, true);
        // The caller's credentials and Host never reach the upstream: the token replaces
        // the former, the client sets the latter from the upstream URL.
        parts.headers.remove(AUTHORIZATION);
        parts.headers.remove(HOST);
        parts.headers.insert(token.header.clone(), token.value.clone());
        parts.headers.append(VIA, hygiene::via(received));
        parts.uri = uri;
        // The client picks HTTP/1.1 or HTTP/2 per connection; a request marked HTTP/2 (an h2c
        // caller) would be refused on an HTTP/1.1 upstream connection.
        parts.version = Version::HTTP_11;

        let sent = Instant::now();
        let result = self.client.request(Request::from_parts(parts, body)).await;
        let upstream_time = sent.elapsed();
        match result {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                if parts.status == StatusCode::UNAUTHORIZED && challenge::says_invalid_token(&parts.headers) {
                    let outcome = self.slot.request_early_renewal(&token);
                    tracing::info!(
                        credential = self.slot.id(),
                        upstream = self.upstream.label(),
                        outcome = outcome.as_str(),
                        "the upstream rejected the token (401 invalid_token)"
                    );
                    if let Some(counters) = &self.counters {
                        counters.early_renewal(outcome);
                    }
                }
                hygiene::remove_hop_by_hop(&mut parts.headers, false);
                (Response::from_parts(parts, Either::Left(body)), true, upstream_time)
            }
            Err(error) => {
                let cause = root_cause(&error);
                tracing::debug!(credential = self.slot.id(), upstream = self.upstream.label(), %cause, "upstream request failed");
                (answer::bad_gateway(self.upstream.label(), &cause), false, upstream_time)
            }
        }
    }
}

/// The innermost cause of a client error ("Connection refused", a TLS alert): what a user
/// can act on. hyper's errors describe the exchange, never header values.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    cause
}
