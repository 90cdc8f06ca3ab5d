//! Shared pieces of the controller tests: a running controller against the API server
//! double, fixtures as builders on the resource, and waits on conditions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::events::Reporter;
use serde_json::{Value, json};
use tokensync::api::{ClientCredential, ClientCredentialStatus};
use tokensync::controller::ControllerArgs;
use tokensync::metrics::Metrics;

use super::apiserver::{ApiServer, Verb, View};

pub const NS: &str = "team-a";
pub const WAIT: Duration = Duration::from_secs(20);

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    args: ControllerArgs,
}

/// Controller flags as a user would pass them, plus --allow-http for local token servers.
pub fn args(extra: &[&str]) -> ControllerArgs {
    let mut argv = vec!["tokensync", "--allow-http", "--admin-addr", "127.0.0.1:0"];
    argv.extend_from_slice(extra);
    Flags::parse_from(argv).args
}

/// A controller running in-process; dropping it (or [`Running::crash`]) aborts it at once,
/// like a killed process. [`Running::stop`] shuts it down gracefully.
pub struct Running {
    task: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub ready: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
}

impl Running {
    pub fn crash(self) {
        self.task.abort();
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        tokio::time::timeout(WAIT, task).await.expect("the controller stops on shutdown").unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn start(api: &ApiServer, args: ControllerArgs) -> Running {
    start_with(api.client(), args, Arc::new(Metrics::default()))
}

/// Name of the controller's client in the double's request log ([`start_counted`]).
pub const CONTROLLER_CLIENT: &str = "controller";

/// Like [`start`], with the client the shipped binary uses
/// ([`tokensync::controller::api_client`]: API timeout, retries, request counting), whose
/// requests the double logs as [`CONTROLLER_CLIENT`]'s.
pub fn start_counted(api: &ApiServer, args: ControllerArgs) -> Running {
    let metrics = Arc::new(Metrics::default());
    let client =
        tokensync::controller::api_client(api.config_named(CONTROLLER_CLIENT), args.api_timeout, &metrics).unwrap();
    start_with(client, args, metrics)
}

/// Runs the controllers with `client` in-process.
pub fn start_with(client: kube::Client, args: ControllerArgs, metrics: Arc<Metrics>) -> Running {
    let ready = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = futures::FutureExt::shared(async move {
        let _ = rx.await;
    });
    let reporter = Reporter { controller: "tokensync".into(), instance: Some("test".into()) };
    let (m, r) = (metrics.clone(), ready.clone());
    let task = tokio::spawn(async move {
        tokensync::controller::run_controllers(client, &args, m, r, reporter, shutdown).await;
    });
    Running { task, stop: Some(tx), ready, metrics }
}

/// Requests that (re)listed `resource` (plural): LIST requests, or watch-lists
/// (`sendInitialEvents=true`, `--initial-list=streaming`). The controller suites run in either
/// mode: CI runs them again with `TOKENSYNC_INITIAL_LIST=streaming` (`.ci/run`).
pub fn initial_lists(v: &View<'_>, resource: &str) -> usize {
    v.requests()
        .iter()
        .filter(|r| r.resource == resource)
        .filter(|r| r.verb == Verb::List || (r.verb == Verb::Watch && r.send_initial_events.as_deref() == Some("true")))
        .count()
}

pub async fn api_server() -> ApiServer {
    ApiServer::builder().crd(&tokensync::api::crd()).namespaces(&["default", NS]).record_changes(true).start().await
}

/// The source Secret.
pub fn source_secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some(NS.into()), ..Default::default() },
        string_data: Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()),
        ..Default::default()
    }
}

/// Fixture builder for ClientCredentials.
pub struct Cc(Value);

impl Cc {
    pub fn new(name: &str, token_endpoint: &str) -> Cc {
        Cc(json!({
            "apiVersion": "tokensync.io/v1alpha1",
            "kind": "ClientCredential",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "tokenEndpoint": token_endpoint,
                "clientAuthentication": "client_secret_post",
                "credentialsRef": {"name": format!("{name}-client")},
            }
        }))
    }

    pub fn spec(mut self, patch: Value) -> Cc {
        merge(&mut self.0["spec"], patch);
        self
    }

    /// In namespace `ns` instead of [`NS`].
    pub fn namespace(mut self, ns: &str) -> Cc {
        self.0["metadata"]["namespace"] = ns.into();
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Cc {
        self.0["metadata"]["annotations"][key] = value.into();
        self
    }

    pub fn build(self) -> ClientCredential {
        serde_json::from_value(self.0).unwrap()
    }

    pub async fn create(self, api: &ApiServer) -> ClientCredential {
        let ccs: Api<ClientCredential> = Api::namespaced(api.client(), NS);
        ccs.create(&PostParams::default(), &self.build()).await.unwrap()
    }
}

pub fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(&k);
                } else {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p,
    }
}

pub async fn create_secret(api: &ApiServer, secret: Secret) {
    let secrets: Api<Secret> = Api::namespaced(api.client(), NS);
    secrets.create(&PostParams::default(), &secret).await.unwrap();
}

pub fn secret_data(api: &ApiServer, name: &str) -> Option<BTreeMap<String, String>> {
    let s: Secret = api.get(Some(NS), name)?;
    Some(s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, String::from_utf8(v.0).unwrap())).collect())
}

pub fn status(api: &ApiServer, name: &str) -> Option<ClientCredentialStatus> {
    let cc: ClientCredential = api.get(Some(NS), name)?;
    cc.status
}

/// (status, reason) of a condition.
pub fn condition(api: &ApiServer, name: &str, type_: &str) -> Option<(String, String)> {
    let s = status(api, name)?;
    s.conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.clone(), c.reason.clone()))
}

pub async fn wait_condition(api: &ApiServer, name: &str, type_: &str, want: (&str, &str)) {
    let result = api
        .wait_for(
            |v| {
                let cc: Option<ClientCredential> = v.get(Some(NS), name);
                cc.and_then(|c| c.status)
                    .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == type_))
                    .is_some_and(|c| c.status == want.0 && c.reason == want.1)
            },
            WAIT,
        )
        .await;
    if result.is_err() {
        panic!("{name}: {type_} never became {want:?}; status: {:#?}", status(api, name));
    }
}

pub async fn wait_secret_value(api: &ApiServer, name: &str, key: &str, want: &str) {
    let result = api
        .wait_for(
            |v| {
                let s: Option<Secret> = v.get(Some(NS), name);
                s.and_then(|s| s.data).and_then(|d| d.get(key).cloned()).is_some_and(|b| b.0 == want.as_bytes())
            },
            WAIT,
        )
        .await;
    if result.is_err() {
        panic!("Secret {name} key {key} never became {want:?}; it is {:?}", secret_data(api, name));
    }
}
