//! How the watchers get the objects that exist when they start, and again after their watch
//! expired (410): `--initial-list=paged|streaming`.
//!
//! Either way every (re)list is consistent, never "any" (`resourceVersion=0`), for the
//! reason given in [`super::controller_for_scope`] (issue 16): after an API server restart,
//! or behind the load balancer of a control plane with several API servers, a watch cache can
//! answer "any" with a state older than the one the controller already saw.
//! - Paged: LIST without a resourceVersion (a consistent read; kube's default list
//!   semantic), in pages of 500, then a WATCH from the list's version.
//! - Streaming: one WATCH with `sendInitialEvents=true` (KEP-3157 "watch-list"): ADDED events
//!   for the state, a BOOKMARK marking their end, then changes. kube 5's watcher asks for that
//!   state at `resourceVersion=0`, which the API server serves from its watch cache as it
//!   stands, however far behind: "any" again. The watchers' client therefore drops the
//!   resourceVersion from those requests ([`consistent`]), which the API server reads as a
//!   consistent read: it first brings its watch cache up to etcd's current revision, and the
//!   bookmark carries that revision or a later one. Resumed watches (from a bookmark's
//!   version, without `sendInitialEvents`) are sent unchanged.

use clap::ValueEnum;
use kube::Client;
use kube::runtime::watcher;

/// The `--initial-list` strategy of every watcher.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InitialList {
    /// Paginated LIST requests (500 objects a page), then a WATCH from the list's version.
    /// Works with every Kubernetes version.
    #[default]
    Paged,
    /// One WATCH streaming the initial state (watch-list, `sendInitialEvents=true`): no LIST
    /// request. Needs the API server's WatchList feature gate, on by default in Kubernetes
    /// 1.32 and from 1.34 on, but off in 1.27-1.31 and 1.33: there every watch is refused
    /// (422) and the controller never becomes ready.
    Streaming,
}

impl InitialList {
    /// The watcher configuration (bookmarks are on: a streaming list needs them).
    pub fn config(self) -> watcher::Config {
        match self {
            InitialList::Paged => watcher::Config::default(),
            InitialList::Streaming => watcher::Config::default().streaming_lists(),
        }
    }

    /// The client the watchers use: `client` itself when paged; when streaming, one that
    /// sends the initial watch as a consistent read ([`consistent`]).
    pub fn client(self, client: &Client) -> Client {
        match self {
            InitialList::Paged => client.clone(),
            InitialList::Streaming => {
                let inner = client.clone();
                let service = tower::service_fn(move |mut request: http::Request<kube::client::Body>| {
                    let inner = inner.clone();
                    async move {
                        if let Some(uri) = consistent(request.uri()) {
                            *request.uri_mut() = uri;
                        }
                        inner.send(request).await
                    }
                });
                Client::new(service, client.default_namespace())
            }
        }
    }
}

/// A watch-list request "at any version" (`sendInitialEvents=true` with
/// `resourceVersion=0`) made consistent: the same request without its resourceVersion.
/// `None` for every other request.
pub fn consistent(uri: &http::Uri) -> Option<http::Uri> {
    let query = uri.query()?;
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let initial_events = pairs.iter().any(|(k, v)| k == "sendInitialEvents" && v == "true");
    let any = pairs.iter().any(|(k, v)| k == "resourceVersion" && v == "0");
    if !(initial_events && any) {
        return None;
    }
    let rest = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter().filter(|(k, _)| k != "resourceVersion"))
        .finish();
    format!("{}?{rest}", uri.path()).parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(uri: &str) -> Option<String> {
        consistent(&uri.parse().unwrap()).map(|u| u.to_string())
    }

    #[test]
    fn only_watch_lists_at_any_version_are_made_consistent() {
        // What kube 5's streaming watcher sends first.
        assert_eq!(
            rewrite(
                "/api/v1/namespaces/ns/secrets?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true\
                 &sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=0"
            )
            .as_deref(),
            Some(
                "/api/v1/namespaces/ns/secrets?watch=true&timeoutSeconds=290&allowWatchBookmarks=true\
                 &sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
            )
        );
        // Selectors are kept, encoded.
        assert_eq!(
            rewrite("/api/v1/secrets?labelSelector=a%3Db%2Cc&sendInitialEvents=true&resourceVersion=0").as_deref(),
            Some("/api/v1/secrets?labelSelector=a%3Db%2Cc&sendInitialEvents=true")
        );
        // A resumed watch, a list, a consistent watch-list: unchanged.
        assert_eq!(rewrite("/api/v1/secrets?&watch=true&allowWatchBookmarks=true&resourceVersion=42"), None);
        assert_eq!(rewrite("/api/v1/secrets?resourceVersion=0&resourceVersionMatch=NotOlderThan"), None);
        assert_eq!(rewrite("/api/v1/secrets?sendInitialEvents=true&resourceVersion=42"), None);
        assert_eq!(rewrite("/api/v1/secrets"), None);
    }
}
