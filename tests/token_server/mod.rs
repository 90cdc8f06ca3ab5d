//! A scriptable HTTP token server on 127.0.0.1 for the engine's tests: every request is
//! recorded, and a handler closure decides each answer. Vendor servers in tests/vendors.rs
//! are handlers that reproduce the vendors' documentation.

#![allow(dead_code)]

pub mod issuer;
pub mod vendors;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Response, StatusCode, Uri};
use base64::Engine;
use serde_json::Value;

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or_default()
    }

    /// The body as a form, or None when it is not form-encoded.
    pub fn form(&self) -> Option<BTreeMap<String, String>> {
        if !self.content_type().starts_with("application/x-www-form-urlencoded") {
            return None;
        }
        Some(url::form_urlencoded::parse(&self.body).into_owned().collect())
    }

    /// The body as a JSON object of strings, or None when it is not JSON.
    pub fn json(&self) -> Option<BTreeMap<String, Value>> {
        if !self.content_type().starts_with("application/json") {
            return None;
        }
        serde_json::from_slice(&self.body).ok()
    }

    /// Body parameters whatever the encoding, as strings.
    pub fn params(&self) -> BTreeMap<String, String> {
        if let Some(form) = self.form() {
            return form;
        }
        self.json()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())))
            .collect()
    }

    /// HTTP Basic credentials, decoded as RFC 6749 2.3.1 says (form-urlencoded id and secret).
    pub fn basic(&self) -> Option<(String, String)> {
        let b64 = self.header("authorization")?.strip_prefix("Basic ")?;
        let raw = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).ok()?).ok()?;
        let (id, secret) = raw.split_once(':')?;
        let dec =
            |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
        Some((dec(id)?, dec(secret)?))
    }
}

/// The server's answer to one request.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Wait this long before answering (slow servers).
    pub delay: Option<Duration>,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
            delay: None,
        }
    }

    pub fn text(status: u16, content_type: &str, body: &str) -> Reply {
        Reply { status, headers: vec![("content-type".into(), content_type.into())], body: body.into(), delay: None }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn delayed(mut self, delay: Duration) -> Reply {
        self.delay = Some(delay);
        self
    }

    /// A standard RFC 6749 5.2 error.
    pub fn oauth_error(status: u16, code: &str, description: &str) -> Reply {
        Reply::json(status, serde_json::json!({"error": code, "error_description": description}))
    }
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;

/// A running server. Dropping it stops it.
pub struct TokenServer {
    pub base: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl TokenServer {
    /// Starts a server whose every answer comes from `handler`.
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> TokenServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let recorded = requests.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let handler = handler.clone();
            let recorded = recorded.clone();
            async move {
                let request = Recorded { method, path: uri.path().to_owned(), headers, body: body.to_vec() };
                recorded.lock().unwrap().push(request.clone());
                let reply = handler(&request);
                if let Some(delay) = reply.delay {
                    tokio::time::sleep(delay).await;
                }
                let mut response = Response::builder().status(StatusCode::from_u16(reply.status).unwrap());
                for (k, v) in reply.headers {
                    response = response.header(k, v);
                }
                response.body(Body::from(reply.body)).unwrap()
            }
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        TokenServer { base, requests, _shutdown: tx }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Requests received for `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.path == path).collect()
    }
}
