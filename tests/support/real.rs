//! Controller tests on the real control plane ([`super::control_plane`]): one namespace per test, the
//! controller in-process with the client the shipped binary builds
//! ([`tokensync::controller::api_client`]: API timeout, retries, request counting) and
//! `--namespace` set to the test's own, and waits that watch the object until a condition
//! holds (kube's `await_condition`), with a timeout.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::wait::await_condition;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokensync::api::{ClientCredential, ClientCredentialStatus};
use tokensync::controller::ControllerArgs;
use tokensync::metrics::Metrics;

use super::control_plane::ControlPlane;
use super::controller::{Cc, Running, start_with};

/// How long a wait on the real server may take: it shares two cores with every other test.
pub const WAIT: Duration = Duration::from_secs(30);

/// One test's namespace on a control plane, with an admin client.
#[derive(Clone)]
pub struct Env {
    pub plane: ControlPlane,
    pub client: kube::Client,
    pub ns: String,
}

impl Env {
    /// A new namespace on this test binary's shared control plane.
    pub async fn new(prefix: &str) -> Env {
        Env::on(ControlPlane::shared(), prefix).await
    }

    /// A new namespace on `plane`.
    pub async fn on(plane: ControlPlane, prefix: &str) -> Env {
        let client = plane.client().await;
        let ns = plane.namespace(prefix).await;
        Env { plane, client, ns }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn secrets(&self) -> Api<Secret> {
        self.api()
    }

    pub fn ccs(&self) -> Api<ClientCredential> {
        self.api()
    }

    /// Starts the controller for this namespace (`--namespace`), as the binary builds it.
    pub async fn start(&self, mut args: ControllerArgs) -> Running {
        args.namespaces = vec![self.ns.clone()];
        self.start_unscoped(args).await
    }

    /// Starts the controller with `args` as they are (all namespaces unless they say).
    pub async fn start_unscoped(&self, args: ControllerArgs) -> Running {
        self.start_as(self.plane.config().await, args).await
    }

    /// Starts the controller with the credentials of `config` (a ServiceAccount, a user).
    pub async fn start_as(&self, config: kube::Config, args: ControllerArgs) -> Running {
        let metrics = Arc::new(Metrics::default());
        let client = tokensync::controller::api_client(config, args.api_timeout, &metrics).unwrap();
        start_with(client, args, metrics)
    }

    pub async fn create_secret(&self, name: &str, data: &[(&str, &str)]) {
        let secret = Secret {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            string_data: Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        };
        self.secrets().create(&PostParams::default(), &secret).await.unwrap();
    }

    pub async fn create_cc(&self, cc: Cc) -> ClientCredential {
        self.ccs().create(&PostParams::default(), &cc.namespace(&self.ns).build()).await.unwrap()
    }

    pub async fn merge_patch_cc(&self, name: &str, patch: Value) {
        self.ccs().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    }

    pub async fn merge_patch_secret(&self, name: &str, patch: Value) {
        self.secrets().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    }

    pub async fn secret(&self, name: &str) -> Option<Secret> {
        self.secrets().get_opt(name).await.unwrap()
    }

    pub async fn secret_data(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.secret(name).await.map(|s| decoded(&s))
    }

    pub async fn cc(&self, name: &str) -> Option<ClientCredential> {
        self.ccs().get_opt(name).await.unwrap()
    }

    pub async fn status(&self, name: &str) -> Option<ClientCredentialStatus> {
        self.cc(name).await?.status
    }

    /// (status, reason) of a condition.
    pub async fn condition(&self, name: &str, type_: &str) -> Option<(String, String)> {
        let s = self.status(name).await?;
        s.conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.clone(), c.reason.clone()))
    }

    /// Waits until `cond` holds for the object `name` (None: it does not exist).
    pub async fn wait<K>(&self, name: &str, what: &str, cond: impl Fn(Option<&K>) -> bool + Send + 'static) -> Option<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Debug
            + Send
            + DeserializeOwned
            + 'static,
    {
        wait_on(self.api(), name, what, cond).await
    }

    pub async fn wait_cc(&self, name: &str, what: &str, cond: impl Fn(&ClientCredential) -> bool + Send + 'static) {
        self.wait::<ClientCredential>(name, what, move |c| c.is_some_and(&cond)).await;
    }

    pub async fn wait_status(
        &self,
        name: &str,
        what: &str,
        cond: impl Fn(&ClientCredentialStatus) -> bool + Send + 'static,
    ) {
        self.wait_cc(name, what, move |c| c.status.as_ref().is_some_and(&cond)).await;
    }

    pub async fn wait_condition(&self, name: &str, type_: &str, want: (&str, &str)) {
        let (t, s, r) = (type_.to_owned(), want.0.to_owned(), want.1.to_owned());
        self.wait_status(name, &format!("{type_}={}/{}", want.0, want.1), move |st| {
            st.conditions.iter().any(|c| c.type_ == t && c.status == s && c.reason == r)
        })
        .await;
    }

    /// Waits until Secret `name` exists with `want` under `key`; returns it.
    pub async fn wait_secret_value(&self, name: &str, key: &str, want: &str) -> Secret {
        let (k, w) = (key.to_owned(), want.to_owned());
        self.wait::<Secret>(name, &format!("{key}={want:?}"), move |s| {
            s.and_then(|s| s.data.as_ref()?.get(&k)).is_some_and(|b| b.0 == w.as_bytes())
        })
        .await
        .expect("the Secret exists")
    }

    pub async fn wait_secret_gone(&self, name: &str) {
        self.wait::<Secret>(name, "deleted", |s| s.is_none()).await;
    }

    /// events.k8s.io/v1 Events in this namespace, as JSON.
    pub async fn events(&self) -> Vec<Value> {
        let api: Api<k8s_openapi::api::events::v1::Event> = self.api();
        let list = api.list(&ListParams::default()).await.unwrap();
        list.items.iter().map(|e| serde_json::to_value(e).unwrap()).collect()
    }

    /// Waits until the namespace's Events satisfy `cond`; returns them.
    pub async fn wait_events(&self, what: &str, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let api: Api<k8s_openapi::api::events::v1::Event> = self.api();
        let found = tokio::time::timeout(WAIT, async {
            use futures::TryStreamExt;
            let mut stream = std::pin::pin!(kube::runtime::watcher(api, Default::default()).default_backoff());
            let mut seen: BTreeMap<String, Value> = BTreeMap::new();
            while let Some(event) = stream.try_next().await.unwrap() {
                if let kube::runtime::watcher::Event::Apply(e) | kube::runtime::watcher::Event::InitApply(e) = event {
                    seen.insert(e.metadata.uid.clone().unwrap_or_default(), serde_json::to_value(&e).unwrap());
                }
                let all: Vec<Value> = seen.values().cloned().collect();
                if cond(&all) {
                    return all;
                }
            }
            unreachable!("a watcher never ends")
        })
        .await;
        match found {
            Ok(all) => all,
            Err(_) => panic!("Events never {what} within {WAIT:?}: {:#?}", self.events().await),
        }
    }
}

/// Waits until `cond` holds for the object `name` in `api`, watching it; panics after [`WAIT`]
/// with the object as it then is.
pub async fn wait_on<K>(
    api: Api<K>,
    name: &str,
    what: &str,
    cond: impl Fn(Option<&K>) -> bool + Send + 'static,
) -> Option<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + Debug + Send + DeserializeOwned + 'static,
{
    match tokio::time::timeout(WAIT, await_condition(api.clone(), name, cond)).await {
        Ok(found) => found.expect("watching the object"),
        Err(_) => {
            let now = api.get_opt(name).await;
            panic!("{name}: never {what} within {WAIT:?}; it is {now:#?}")
        }
    }
}

pub fn decoded(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

/// The controller's own Kubernetes API requests with this verb and resource, any answer
/// (`tokensync_kube_requests_total`, which the shipped client stack counts).
pub fn kube_requests(metrics: &Metrics, verb: &str, resource: &str) -> u64 {
    let labels = [format!("verb=\"{verb}\""), format!("resource=\"{resource}\"")];
    metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("tokensync_kube_requests_total{"))
        .filter(|l| labels.iter().all(|label| l.contains(label.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}
