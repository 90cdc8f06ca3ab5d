//! Counting the controller's Kubernetes API requests: `tokensync_kube_requests_total{verb,
//! resource, code}`. [`classify`] turns a request's method, path, query and content type
//! into the verb and resource the API server itself would name (Kubernetes'
//! `RequestInfo`), [`CountLayer`] counts every request the client sends with it.
//!
//! Labels never hold a name or a namespace: the resource is the plural, with the subresource
//! joined by "/" (`secrets`, `clientcredentials/status`, `serviceaccounts/token`), and any
//! path that is not a resource (discovery, `/version`, `/.well-known/...`) is `nonresource`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{Method, Request, Response, StatusCode, header};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::KubeRequestLabels;

/// The resource label of requests to paths that are not resources.
pub const NON_RESOURCE: &str = "nonresource";

/// The Kubernetes verb and the resource (plural, `/subresource`) of a request.
///
/// Verbs: `get`, `list`, `watch`, `create`, `update`, `patch`, `apply` (a PATCH with an
/// `application/apply-patch+...` body: server-side apply), `delete`, `deletecollection`.
pub fn classify(
    method: &Method,
    path: &str,
    query: Option<&str>,
    content_type: Option<&str>,
) -> (&'static str, String) {
    let watch_param = query.is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "watch" && (v == "true" || v == "1"))
    });
    let mut parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest = match parts.as_slice() {
        ["api", _version, ..] => 2,
        ["apis", _group, _version, ..] => 3,
        _ => 0,
    };
    if rest == 0 || parts.len() == rest {
        return (non_resource_verb(method), NON_RESOURCE.to_owned());
    }
    parts.drain(..rest);
    // The legacy /watch/ prefix (`/api/v1/watch/namespaces/NS/secrets`).
    let watch_prefix = parts.first() == Some(&"watch");
    if watch_prefix {
        parts.remove(0);
    }
    // /namespaces/NS/PLURAL/... is PLURAL in namespace NS, except the namespace's own
    // subresources (/namespaces/NS/status, /namespaces/NS/finalize), as the API server reads it.
    if parts.len() > 2 && parts[0] == "namespaces" && !matches!(parts[2], "status" | "finalize") {
        parts.drain(..2);
    }
    let Some(plural) = parts.first().copied() else {
        return (non_resource_verb(method), NON_RESOURCE.to_owned());
    };
    let named = parts.len() > 1;
    let resource = match parts.get(2) {
        Some(sub) => format!("{plural}/{sub}"),
        None => plural.to_owned(),
    };
    let apply = content_type.is_some_and(|ct| ct.trim().starts_with("application/apply-patch"));
    let verb = match *method {
        Method::GET | Method::HEAD if watch_prefix || watch_param => "watch",
        Method::GET | Method::HEAD if named => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH if apply => "apply",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "other",
    };
    (verb, resource)
}

fn non_resource_verb(method: &Method) -> &'static str {
    match *method {
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "other",
    }
}

/// The code label: the status class of the answer (`2xx` ... `5xx`), `error` when the
/// request failed without an answer (connection refused or reset), `cancelled` when the
/// caller gave up before the answer came (the API timeout, a cancelled reconcile).
fn code_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// A tower layer counting every request that passes through it in `counter`.
#[derive(Clone)]
pub struct CountLayer {
    counter: Family<KubeRequestLabels, Counter>,
}

impl CountLayer {
    pub fn new(counter: Family<KubeRequestLabels, Counter>) -> Self {
        CountLayer { counter }
    }
}

impl<S> tower::Layer<S> for CountLayer {
    type Service = Count<S>;

    fn layer(&self, inner: S) -> Count<S> {
        Count { inner, counter: self.counter.clone() }
    }
}

/// The service of [`CountLayer`].
#[derive(Clone)]
pub struct Count<S> {
    inner: S,
    counter: Family<KubeRequestLabels, Counter>,
}

/// Counts one request when dropped, with the code it has by then.
struct Outcome {
    counter: Family<KubeRequestLabels, Counter>,
    labels: KubeRequestLabels,
}

impl Outcome {
    fn answered(&mut self, code: &'static str) {
        self.labels.code = code.into();
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        self.counter.get_or_create(&self.labels).inc();
    }
}

impl<S, B, R> tower::Service<Request<B>> for Count<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let (verb, resource) = classify(request.method(), request.uri().path(), request.uri().query(), content_type);
        let mut outcome = Outcome {
            counter: self.counter.clone(),
            labels: KubeRequestLabels { verb: verb.into(), resource, code: "cancelled".into() },
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            outcome.answered(match &result {
                Ok(response) => code_class(response.status()),
                Err(_) => "error",
            });
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APPLY: Option<&str> = Some("application/apply-patch+yaml");
    const MERGE: Option<&str> = Some("application/merge-patch+json");

    fn c(method: Method, path: &str, query: Option<&str>, content_type: Option<&str>) -> (&'static str, String) {
        classify(&method, path, query, content_type)
    }

    fn vr(verb: &'static str, resource: &str) -> (&'static str, String) {
        (verb, resource.to_owned())
    }

    #[test]
    fn core_resources() {
        let secret = "/api/v1/namespaces/team-a/secrets/demo";
        assert_eq!(c(Method::GET, secret, None, None), vr("get", "secrets"));
        assert_eq!(c(Method::PATCH, secret, Some("fieldManager=tokensync&force=true"), APPLY), vr("apply", "secrets"));
        assert_eq!(c(Method::PATCH, secret, None, MERGE), vr("patch", "secrets"));
        assert_eq!(c(Method::PUT, secret, None, Some("application/json")), vr("update", "secrets"));
        assert_eq!(c(Method::DELETE, secret, None, None), vr("delete", "secrets"));
        assert_eq!(c(Method::POST, "/api/v1/namespaces/team-a/secrets", None, None), vr("create", "secrets"));
        assert_eq!(c(Method::GET, "/api/v1/namespaces/team-a/secrets", Some("limit=500"), None), vr("list", "secrets"));
        assert_eq!(c(Method::GET, "/api/v1/secrets", None, None), vr("list", "secrets"));
        assert_eq!(
            c(Method::DELETE, "/api/v1/namespaces/team-a/secrets", None, None),
            vr("deletecollection", "secrets")
        );
        assert_eq!(
            c(Method::POST, "/api/v1/namespaces/team-a/serviceaccounts/builder/token", None, None),
            vr("create", "serviceaccounts/token")
        );
    }

    #[test]
    fn group_resources_and_subresources() {
        let cc = "/apis/tokensync.io/v1alpha1/namespaces/team-a/clientcredentials/demo";
        assert_eq!(c(Method::GET, cc, None, None), vr("get", "clientcredentials"));
        assert_eq!(c(Method::PATCH, &format!("{cc}/status"), None, MERGE), vr("patch", "clientcredentials/status"));
        assert_eq!(c(Method::PATCH, &format!("{cc}/status"), None, APPLY), vr("apply", "clientcredentials/status"));
        assert_eq!(
            c(
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/tokensync-system/leases/tokensync-controller",
                None,
                None
            ),
            vr("update", "leases")
        );
        assert_eq!(
            c(Method::POST, "/apis/events.k8s.io/v1/namespaces/team-a/events", None, None),
            vr("create", "events")
        );
        assert_eq!(
            c(Method::PATCH, "/apis/events.k8s.io/v1/namespaces/team-a/events/demo.17f", None, MERGE),
            vr("patch", "events")
        );
    }

    #[test]
    fn cluster_scoped_resources() {
        assert_eq!(
            c(Method::GET, "/apis/tokensync.io/v1alpha1/clusterclientcredentials", None, None),
            vr("list", "clusterclientcredentials")
        );
        assert_eq!(
            c(Method::PATCH, "/apis/tokensync.io/v1alpha1/clusterclientcredentials/shared/status", None, MERGE),
            vr("patch", "clusterclientcredentials/status")
        );
        assert_eq!(c(Method::GET, "/api/v1/namespaces", None, None), vr("list", "namespaces"));
        assert_eq!(c(Method::GET, "/api/v1/namespaces/team-a", None, None), vr("get", "namespaces"));
        assert_eq!(c(Method::PUT, "/api/v1/namespaces/team-a/status", None, None), vr("update", "namespaces/status"));
        assert_eq!(
            c(Method::PUT, "/api/v1/namespaces/team-a/finalize", None, None),
            vr("update", "namespaces/finalize")
        );
        assert_eq!(
            c(Method::PATCH, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x.tokensync.io", None, APPLY),
            vr("apply", "customresourcedefinitions")
        );
    }

    #[test]
    fn watches() {
        let path = "/api/v1/namespaces/team-a/secrets";
        for q in ["watch=true", "watch=1", "labelSelector=a%3Db&watch=true&resourceVersion=12&timeoutSeconds=290"] {
            assert_eq!(c(Method::GET, path, Some(q), None), vr("watch", "secrets"), "{q}");
        }
        assert_eq!(c(Method::GET, path, Some("watch=false"), None), vr("list", "secrets"));
        assert_eq!(c(Method::GET, path, Some("watched=true"), None), vr("list", "secrets"));
        assert_eq!(
            c(Method::GET, "/apis/tokensync.io/v1alpha1/clientcredentials", Some("watch=true"), None),
            vr("watch", "clientcredentials")
        );
        assert_eq!(c(Method::GET, "/api/v1/watch/namespaces/team-a/secrets", None, None), vr("watch", "secrets"));
        assert_eq!(c(Method::GET, "/api/v1/watch/namespaces/team-a/secrets/demo", None, None), vr("watch", "secrets"));
    }

    #[test]
    fn paths_that_are_not_resources() {
        for path in [
            "/version",
            "/api",
            "/apis",
            "/api/v1",
            "/apis/tokensync.io/v1alpha1",
            "/.well-known/openid-configuration",
            "/openid/v1/jwks",
            "/",
        ] {
            assert_eq!(c(Method::GET, path, None, None), vr("get", NON_RESOURCE), "{path}");
        }
    }

    #[test]
    fn labels_never_hold_names_or_namespaces() {
        for (method, path) in [
            (Method::GET, "/api/v1/namespaces/secret-ns/secrets/secret-name"),
            (Method::PATCH, "/apis/tokensync.io/v1alpha1/namespaces/secret-ns/clientcredentials/secret-name/status"),
            (Method::POST, "/api/v1/namespaces/secret-ns/serviceaccounts/secret-name/token"),
            (Method::GET, "/api/v1/namespaces/secret-ns"),
            (Method::GET, "/apis/tokensync.io/v1alpha1/clusterclientcredentials/secret-name"),
        ] {
            let (_, resource) = c(method, path, None, None);
            assert!(!resource.contains("secret-"), "{path}: {resource}");
        }
    }

    #[tokio::test]
    async fn the_layer_counts_each_request_with_its_code_class() {
        use tower::{Layer, Service};
        let counter = Family::<KubeRequestLabels, Counter>::default();
        let inner = tower::service_fn(|request: Request<()>| async move {
            let status = if request.uri().path().ends_with("/missing") { 404 } else { 200 };
            Ok::<_, std::convert::Infallible>(Response::builder().status(status).body(()).unwrap())
        });
        let mut service = CountLayer::new(counter.clone()).layer(inner);
        for path in
            ["/api/v1/namespaces/a/secrets/x", "/api/v1/namespaces/a/secrets/missing", "/api/v1/namespaces/b/secrets/y"]
        {
            service.call(Request::get(path).body(()).unwrap()).await.unwrap();
        }
        // A request given up on before its answer (the API timeout dropping it).
        drop(service.call(Request::delete("/api/v1/namespaces/a/secrets/x").body(()).unwrap()));
        let get = |verb: &str, code: &str| {
            counter
                .get_or_create(&KubeRequestLabels { verb: verb.into(), resource: "secrets".into(), code: code.into() })
                .get()
        };
        assert_eq!((get("get", "2xx"), get("get", "4xx"), get("delete", "cancelled")), (2, 1, 1));
    }
}
