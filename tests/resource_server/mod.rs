//! A resource server on 127.0.0.1 for the proxy's tests: the upstream of `agent --proxy`.
//! It accepts only tokens the test Issuer issued (`token-1` .. `token-N`, N = tokens issued
//! so far) and not revoked by the test, answering others like an RFC 6750 resource server
//! (`401` with `WWW-Authenticate: Bearer error="invalid_token"`). It records every request
//! and counts connections, over plain HTTP/1.1 or over TLS with ALPN (h2 and http/1.1).
//!
//! Routes, by the last path segment (the proxy's base path comes before it):
//! - `/stream`: a response body the test feeds chunk by chunk ([`ResourceServer::feed_next_stream`]);
//! - `/upload`: reports each request body chunk as it arrives ([`ResourceServer::uploads`]),
//!   then answers with the number of bytes;
//! - `/redirect`: `302` to `/elsewhere`;
//! - `/hop`: an answer with hop-by-hop headers (`Connection: X-Up-Private`, `Keep-Alive`,
//!   `Proxy-Authenticate`) beside an end-to-end one (`X-End`);
//! - `/plain-401`: a `401` with a challenge that does not say `invalid_token`;
//! - anything else: `200` with the path, query and token as JSON.

#![allow(dead_code)]

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::sync::mpsc;

use crate::token_server::issuer::Behaviour;

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub version: Version,
    pub headers: http::HeaderMap,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The bearer token sent, if any.
    pub fn token(&self) -> Option<&str> {
        self.header("authorization")?.strip_prefix("Bearer ")
    }
}

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    revoked: Mutex<HashSet<String>>,
    connections: AtomicUsize,
    next_stream: Mutex<Option<mpsc::Receiver<Bytes>>>,
    uploads: Mutex<Option<mpsc::UnboundedSender<Bytes>>>,
}

pub struct ResourceServer {
    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub base: String,
    state: Arc<State>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

type Body = BoxBody<Bytes, Infallible>;

impl ResourceServer {
    /// A plain HTTP/1.1 upstream that accepts the tokens of `issuer`.
    pub async fn start(issuer: Arc<Mutex<Behaviour>>) -> ResourceServer {
        Self::start_with(issuer, None).await
    }

    /// Over TLS with `config` (its ALPN decides HTTP/2 or HTTP/1.1).
    pub async fn start_tls(issuer: Arc<Mutex<Behaviour>>, config: rustls::ServerConfig) -> ResourceServer {
        Self::start_with(issuer, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(issuer: Arc<Mutex<Behaviour>>, tls: Option<tokio_rustls::TlsAcceptor>) -> ResourceServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{}", listener.local_addr().unwrap());
        let state = Arc::new(State::default());
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (accept_state, accept_issuer) = (state.clone(), issuer.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => return },
                    _ = &mut stopped => return,
                };
                accept_state.connections.fetch_add(1, Ordering::SeqCst);
                let (state, issuer, tls) = (accept_state.clone(), accept_issuer.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (state, issuer) = (state.clone(), issuer.clone());
                        async move { Ok::<_, Infallible>(answer(&state, &issuer, request).await) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(tcp).await else { return };
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
        ResourceServer { base, state, _stop: stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// From now on, `token` is refused as a resource server refuses a revoked token.
    pub fn revoke(&self, token: &str) {
        self.state.revoked.lock().unwrap().insert(token.to_owned());
    }

    /// The body of the next `/stream` response: each chunk sent is written when sent; the
    /// body ends when the sender is dropped.
    pub fn feed_next_stream(&self) -> mpsc::Sender<Bytes> {
        let (tx, rx) = mpsc::channel(1);
        *self.state.next_stream.lock().unwrap() = Some(rx);
        tx
    }

    /// The chunks of `/upload` request bodies, as they arrive.
    pub fn uploads(&self) -> mpsc::UnboundedReceiver<Bytes> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.state.uploads.lock().unwrap() = Some(tx);
        rx
    }
}

fn valid(state: &State, issuer: &Mutex<Behaviour>, token: &str) -> bool {
    let issued = issuer.lock().unwrap().issued;
    let ours = token.strip_prefix("token-").and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n >= 1 && n <= issued);
    ours && !state.revoked.lock().unwrap().contains(token)
}

fn full(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", "application/json".parse().unwrap());
    response
}

async fn answer(state: &State, issuer: &Mutex<Behaviour>, request: Request<Incoming>) -> Response<Body> {
    let target = request.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let route = request.uri().path().rsplit('/').next().unwrap_or_default().to_owned();
    let seen = Seen {
        method: request.method().to_string(),
        target: target.clone(),
        version: request.version(),
        headers: request.headers().clone(),
    };
    state.seen.lock().unwrap().push(seen.clone());

    if route == "plain-401" {
        let mut response = full(StatusCode::UNAUTHORIZED, json!({"error": "who are you"}));
        response.headers_mut().insert("www-authenticate", r#"Bearer realm="test""#.parse().unwrap());
        return response;
    }
    let token = seen.token().map(str::to_owned);
    if !token.as_deref().is_some_and(|t| valid(state, issuer, t)) {
        let mut response = full(StatusCode::UNAUTHORIZED, json!({"error": "invalid_token"}));
        let challenge = match token {
            Some(_) => r#"Bearer realm="test", error="invalid_token", error_description="unknown or revoked""#,
            None => r#"Bearer realm="test""#,
        };
        response.headers_mut().insert("www-authenticate", challenge.parse().unwrap());
        return response;
    }
    match route.as_str() {
        "stream" => {
            let Some(rx) = state.next_stream.lock().unwrap().take() else {
                return full(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "no stream fed"}));
            };
            let chunks = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
            });
            Response::new(BodyExt::boxed(StreamBody::new(chunks)))
        }
        "upload" => {
            let reporter = state.uploads.lock().unwrap().clone();
            let mut body = request.into_body();
            let mut total = 0usize;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Ok(data) = frame.into_data() {
                    total += data.len();
                    if let Some(reporter) = &reporter {
                        let _ = reporter.send(data);
                    }
                }
            }
            full(StatusCode::OK, json!({"received": total}))
        }
        "redirect" => {
            let mut response = full(StatusCode::FOUND, json!({}));
            response.headers_mut().insert("location", "/elsewhere".parse().unwrap());
            response
        }
        "hop" => {
            let mut response = full(StatusCode::OK, json!({}));
            let headers = response.headers_mut();
            headers.insert("connection", "X-Up-Private".parse().unwrap());
            headers.insert("x-up-private", "1".parse().unwrap());
            headers.insert("keep-alive", "timeout=5".parse().unwrap());
            headers.insert("proxy-authenticate", "Basic realm=\"up\"".parse().unwrap());
            headers.insert("x-end", "kept".parse().unwrap());
            response
        }
        _ => full(StatusCode::OK, json!({"target": target, "token": seen.token()})),
    }
}
