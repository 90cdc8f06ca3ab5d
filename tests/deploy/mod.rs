//! Shared by the install tests (tests/deploy_manifests.rs, tests/helm_chart.rs): typed parsing
//! of Kubernetes manifests, and the table of every Kubernetes API call the controller makes,
//! which the RBAC of every install must grant exactly.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn read(path: impl AsRef<Path>) -> String {
    let path = repo().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The namespace of the plain manifests (the chart uses the release namespace).
pub const SYSTEM_NAMESPACE: &str = "tokensync-system";
/// The controller's default Lease name (`--leader-election-lease`).
pub const LEASE: &str = "tokensync-controller";

/// One object of an install, as the typed Kubernetes struct of its kind. A kind that is not
/// listed here makes parsing fail: an install must not grow objects no test looks at.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // test data, a handful of objects
pub enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
    Deployment(Box<Deployment>),
    Service(Service),
    PodDisruptionBudget(PodDisruptionBudget),
    ServiceMonitor(ServiceMonitor),
    PrometheusRule(PrometheusRule),
    ConfigMap(k8s_openapi::api::core::v1::ConfigMap),
}

/// monitoring.coreos.com/v1 PrometheusRule, the part the alerts use; unknown fields are
/// refused like the ServiceMonitor's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrometheusRule {
    pub api_version: String,
    pub kind: String,
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    pub spec: PrometheusRuleSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusRuleSpec {
    pub groups: Vec<RuleGroup>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleGroup {
    pub name: String,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub alert: String,
    pub expr: String,
    #[serde(rename = "for")]
    pub for_: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// The part of monitoring.coreos.com/v1 ServiceMonitor the chart uses. Unknown fields are
/// refused, so a misspelt field fails the test instead of being ignored by Prometheus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceMonitor {
    pub api_version: String,
    pub kind: String,
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    pub spec: ServiceMonitorSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    pub selector: LabelSelector,
    pub namespace_selector: NamespaceSelector,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceSelector {
    pub match_names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    pub port: String,
    pub path: String,
    pub interval: String,
    pub scrape_timeout: String,
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Namespace(_) => "Namespace",
            Object::ServiceAccount(_) => "ServiceAccount",
            Object::ClusterRole(_) => "ClusterRole",
            Object::ClusterRoleBinding(_) => "ClusterRoleBinding",
            Object::Role(_) => "Role",
            Object::RoleBinding(_) => "RoleBinding",
            Object::Deployment(_) => "Deployment",
            Object::Service(_) => "Service",
            Object::PodDisruptionBudget(_) => "PodDisruptionBudget",
            Object::ServiceMonitor(_) => "ServiceMonitor",
            Object::PrometheusRule(_) => "PrometheusRule",
            Object::ConfigMap(_) => "ConfigMap",
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            Object::Namespace(o) => serde_json::to_value(o),
            Object::ServiceAccount(o) => serde_json::to_value(o),
            Object::ClusterRole(o) => serde_json::to_value(o),
            Object::ClusterRoleBinding(o) => serde_json::to_value(o),
            Object::Role(o) => serde_json::to_value(o),
            Object::RoleBinding(o) => serde_json::to_value(o),
            Object::Deployment(o) => serde_json::to_value(o),
            Object::Service(o) => serde_json::to_value(o),
            Object::PodDisruptionBudget(o) => serde_json::to_value(o),
            Object::ServiceMonitor(o) => serde_json::to_value(o),
            Object::PrometheusRule(o) => serde_json::to_value(o),
            Object::ConfigMap(o) => serde_json::to_value(o),
        }
        .unwrap()
    }

    /// kind/namespace/name, to name objects in messages and to match them up.
    pub fn key(&self) -> String {
        let json = self.to_json();
        let meta = &json["metadata"];
        format!(
            "{}/{}/{}",
            self.kind(),
            meta["namespace"].as_str().unwrap_or("-"),
            meta["name"].as_str().unwrap_or_default()
        )
    }
}

fn typed<T: serde::de::DeserializeOwned + Serialize>(doc: &Value, origin: &str) -> T {
    let value: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{origin}: {e}"));
    // k8s-openapi ignores fields it does not know; a round trip that loses one means a
    // misspelt or misplaced field, which the API server would drop (or reject) too.
    let back = serde_json::to_value(&value).unwrap();
    assert_eq!(
        &back, doc,
        "{origin}: some fields are not part of the {} schema (or have the wrong type):\n  read: {doc}\n  kept: {back}",
        doc["kind"]
    );
    value
}

/// Parses a multi-document YAML text into typed objects. Empty documents (a template that
/// rendered nothing) are skipped; a document of any kind not in [`Object`] fails.
pub fn parse(text: &str, origin: &str) -> Vec<Object> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("{origin}: not YAML: {e}"));
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let origin = format!("{origin}, document {}", i + 1);
        let api_version = doc["apiVersion"].as_str().unwrap_or_default();
        let kind = doc["kind"].as_str().unwrap_or_default();
        let object = match (api_version, kind) {
            ("v1", "Namespace") => Object::Namespace(typed(&doc, &origin)),
            ("v1", "ServiceAccount") => Object::ServiceAccount(typed(&doc, &origin)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => Object::ClusterRole(typed(&doc, &origin)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => Object::ClusterRoleBinding(typed(&doc, &origin)),
            ("rbac.authorization.k8s.io/v1", "Role") => Object::Role(typed(&doc, &origin)),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => Object::RoleBinding(typed(&doc, &origin)),
            ("apps/v1", "Deployment") => Object::Deployment(Box::new(typed(&doc, &origin))),
            ("v1", "Service") => Object::Service(typed(&doc, &origin)),
            ("policy/v1", "PodDisruptionBudget") => Object::PodDisruptionBudget(typed(&doc, &origin)),
            ("monitoring.coreos.com/v1", "ServiceMonitor") => Object::ServiceMonitor(typed(&doc, &origin)),
            ("monitoring.coreos.com/v1", "PrometheusRule") => Object::PrometheusRule(typed(&doc, &origin)),
            ("v1", "ConfigMap") => Object::ConfigMap(typed(&doc, &origin)),
            _ => panic!("{origin}: unexpected object {api_version} {kind}: no install test knows this kind"),
        };
        out.push(object);
    }
    out
}

/// Where the controller may act: in the namespaces it watches (all, or the listed ones),
/// or only in its own namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Watched,
    Own,
    /// Cluster-wide, only with --cluster-credentials (the ClusterClientCredential controller),
    /// granted by a ClusterRole of its own on top of the cluster-wide install's.
    ClusterCredentials,
    /// Not the controller: the user running `tokensync status` / `tokensync renew` (or
    /// `kubectl tokensync`), with their own kubeconfig. Granted by the ClusterRole in
    /// deploy/cli/tokensync-cli.yaml, which a cluster admin binds to operators.
    Cli,
}

/// A permission: (apiGroup, resource, verb, resourceName when limited to one object).
pub type Grant = (&'static str, &'static str, &'static str, Option<&'static str>);

/// One row of the table: a permission, where it is needed, and the code that needs it.
pub struct Needed {
    pub scope: Scope,
    pub grant: Grant,
    /// (file, text of the line that makes the call). Checked to exist, and every Kubernetes
    /// API call in src/ must be named by some row.
    pub sites: &'static [(&'static str, &'static str)],
}

/// Every Kubernetes API call the controller makes, and the permission it needs.
pub const NEEDED: &[Needed] = &[
    // src/controller/mod.rs controller_for_scope: the ClientCredential reflector's watcher
    // lists, then watches (with --initial-list=streaming it only watches; the default lists). src/controller/pipeline.rs read_fresh GETs the ClientCredential
    // before a token request when the cache lags behind our own status write, and after a
    // status patch computed from a stale read was refused (409).
    Needed {
        scope: Scope::Watched,
        grant: ("tokensync.io", "clientcredentials", "get", None),
        sites: &[("src/controller/pipeline.rs", ".get_opt(&self.cc.name_any())")],
    },
    Needed {
        scope: Scope::Watched,
        grant: ("tokensync.io", "clientcredentials", "list", None),
        sites: &[("src/controller/mod.rs", "watcher(ccs, list.config())")],
    },
    Needed {
        scope: Scope::Watched,
        grant: ("tokensync.io", "clientcredentials", "watch", None),
        sites: &[("src/controller/mod.rs", "watcher(ccs, list.config())")],
    },
    // src/controller/pipeline.rs patch_status: a JSON merge patch of .status (both kinds).
    Needed {
        scope: Scope::Watched,
        grant: ("tokensync.io", "clientcredentials/status", "patch", None),
        sites: &[("src/controller/pipeline.rs", "api.patch_status(&object.name_any()")],
    },
    // src/controller/reconcile.rs and cluster.rs read the target (a copy) before taking a name
    // they do not manage yet; src/controller/pipeline.rs reads the state Secret before a token
    // request when the cache may lag, and one missing from the cache by name.
    Needed {
        scope: Scope::Watched,
        grant: ("", "secrets", "get", None),
        sites: &[
            // Source Secrets, read when the watch saw them change since the last read.
            ("src/controller/sources.rs", "let fetched = api.get_opt(&secret.name)"),
            ("src/controller/reconcile.rs", "let existing = secrets.get_opt(&target_name)"),
            ("src/controller/pipeline.rs", "self.state_api.get_opt(&self.state.name)"),
            // write_state_over: after a 409, what another writer stored in the state Secret.
            ("src/controller/state.rs", "let current = secrets.get_opt(&desired.name_any())"),
            ("src/controller/cluster.rs", "secrets.get_opt(target_name)"),
        ],
    },
    // src/controller/mod.rs: the watch of managed Secrets (label selector) and the
    // metadata-only watch of all Secrets that notices source Secret changes. RBAC cannot
    // tell a metadata-only list from a full one: both need list and watch.
    // The ClusterClientCredential controller watches its own Secrets (label selector) and
    // Secret metadata cluster-wide, and lists its copies when cleaning up.
    Needed {
        scope: Scope::Watched,
        grant: ("", "secrets", "list", None),
        sites: &[
            ("src/controller/mod.rs", "watcher(secrets.clone(), managed_config)"),
            ("src/controller/mod.rs", "watcher(secret_metadata, "),
            ("src/controller/mod.rs", "watcher(secrets, copies_config)"),
            ("src/controller/cluster.rs", "all.list(&params)"),
        ],
    },
    Needed {
        scope: Scope::Watched,
        grant: ("", "secrets", "watch", None),
        sites: &[
            ("src/controller/mod.rs", "watcher(secrets.clone(), managed_config)"),
            ("src/controller/mod.rs", "watcher(secret_metadata, "),
            ("src/controller/mod.rs", "watcher(secrets, copies_config)"),
        ],
    },
    // src/controller/target.rs apply(): server-side apply of the target and state
    // Secrets. Apply is a PATCH; the API server authorizes an apply that creates the object
    // as `create` as well.
    Needed {
        scope: Scope::Watched,
        grant: ("", "secrets", "patch", None),
        sites: &[
            ("src/controller/target.rs", "secrets.patch(&secret.name_any(), &params, &Patch::Apply("),
            // apply_target: removing keys another writer added to a target.
            ("src/controller/target.rs", "secrets.patch(&applied.name_any(), &PatchParams::default(), &Patch::Merge("),
        ],
    },
    Needed {
        scope: Scope::Watched,
        grant: ("", "secrets", "create", None),
        sites: &[
            ("src/controller/target.rs", "secrets.patch(&secret.name_any(), &params, &Patch::Apply("),
            // create_state: the first write of a state Secret is a create, refused (409) when
            // another writer created it meanwhile (issue 26).
            ("src/controller/state.rs", "let created = secrets.create(&params, &shell)"),
        ],
    },
    // src/controller/reconcile.rs: a Secret's type is immutable, so when spec.target.type
    // changes, tokensync deletes its own target Secret and applies it anew.
    Needed {
        scope: Scope::Watched,
        grant: ("", "secrets", "delete", None),
        sites: &[
            ("src/controller/reconcile.rs", "secrets.delete(target_name, &Default::default())"),
            // Our own previous target after spec.target.name changed.
            ("src/controller/reconcile.rs", "secrets.delete(&old.name, &params)"),
            // A copy whose type changed; copies and state removed on cleanup.
            ("src/controller/cluster.rs", ".delete(target_name, &DeleteParams::default())"),
            ("src/controller/cluster.rs", "api.delete(name, &DeleteParams::default())"),
        ],
    },
    // src/controller/events.rs Recorder::publish creates an events.k8s.io/v1 Event in the
    // ClientCredential's namespace, and patches it (series count) when the same event repeats
    // within six minutes.
    // (The ClusterClientCredential controller records through the same function; Events
    // about a cluster-scoped object go to the default namespace.)
    Needed {
        scope: Scope::Watched,
        grant: ("events.k8s.io", "events", "create", None),
        sites: &[
            ("src/controller/pipeline.rs", "ctx.recorder.publish("),
            ("src/controller/events.rs", "events.create(&PostParams::default(), &event)"),
        ],
    },
    Needed {
        scope: Scope::Watched,
        grant: ("events.k8s.io", "events", "patch", None),
        sites: &[
            ("src/controller/pipeline.rs", "ctx.recorder.publish("),
            ("src/controller/events.rs", "events.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))"),
        ],
    },
    // src/controller/service_account.rs: secretless credentials read the ServiceAccount the
    // spec names (its opt-in annotation) and request a token for it (TokenRequest API).
    Needed {
        scope: Scope::Watched,
        grant: ("", "serviceaccounts", "get", None),
        sites: &[("src/controller/service_account.rs", ".get_opt(&sa.name)")],
    },
    Needed {
        scope: Scope::Watched,
        grant: ("", "serviceaccounts/token", "create", None),
        sites: &[("src/controller/service_account.rs", ".create_token_request(&sa.name")],
    },
    // src/controller/mod.rs cluster_controller: the ClusterClientCredential reflector and the
    // metadata-only Namespace reflector (selection by name and labels).
    Needed {
        scope: Scope::ClusterCredentials,
        grant: ("tokensync.io", "clusterclientcredentials", "list", None),
        sites: &[("src/controller/mod.rs", "watcher(cccs, list.config())")],
    },
    // src/controller/pipeline.rs read_fresh: the GET before a token request when the cache may
    // lag, and after a stale status patch (both kinds).
    Needed {
        scope: Scope::ClusterCredentials,
        grant: ("tokensync.io", "clusterclientcredentials", "get", None),
        sites: &[("src/controller/pipeline.rs", ".get_opt(&self.cc.name_any())")],
    },
    Needed {
        scope: Scope::ClusterCredentials,
        grant: ("tokensync.io", "clusterclientcredentials", "watch", None),
        sites: &[("src/controller/mod.rs", "watcher(cccs, list.config())")],
    },
    // src/controller/cluster.rs patch_finalizers: a merge patch of metadata.finalizers.
    Needed {
        scope: Scope::ClusterCredentials,
        grant: ("tokensync.io", "clusterclientcredentials", "patch", None),
        sites: &[(
            "src/controller/cluster.rs",
            "api.patch(&ccc.name_any(), &PatchParams::default(), &Patch::Merge(&patch))",
        )],
    },
    Needed {
        scope: Scope::ClusterCredentials,
        grant: ("tokensync.io", "clusterclientcredentials/status", "patch", None),
        sites: &[("src/controller/pipeline.rs", "api.patch_status(&object.name_any()")],
    },
    Needed {
        scope: Scope::ClusterCredentials,
        grant: ("", "namespaces", "list", None),
        sites: &[("src/controller/mod.rs", "watcher(namespaces, list.config())")],
    },
    Needed {
        scope: Scope::ClusterCredentials,
        grant: ("", "namespaces", "watch", None),
        sites: &[("src/controller/mod.rs", "watcher(namespaces, list.config())")],
    },
    // src/controller/leader.rs try_acquire_or_renew: reads the Lease, creates it when
    // absent (a create cannot be limited to a name), replaces (PUT = update) it to take or
    // renew it. Only in tokensync's own namespace, only the one Lease.
    Needed {
        scope: Scope::Own,
        grant: ("coordination.k8s.io", "leases", "get", Some(LEASE)),
        sites: &[("src/controller/leader.rs", "self.api.get_opt(&self.name)")],
    },
    Needed {
        scope: Scope::Own,
        grant: ("coordination.k8s.io", "leases", "create", None),
        sites: &[("src/controller/leader.rs", "self.api.create(&PostParams::default(), &lease)")],
    },
    Needed {
        scope: Scope::Own,
        grant: ("coordination.k8s.io", "leases", "update", Some(LEASE)),
        sites: &[("src/controller/leader.rs", "self.api.replace(&lease.name_any()")],
    },
    // src/ops: `tokensync status` reads the credential, the target Secret (key names only),
    // the state Secret (JWT claims) and the Events about it; `tokensync renew` reads or lists
    // the credentials, sets the renew annotation with a merge patch, and --wait watches the
    // object (kube-runtime's await_condition lists and watches by name).
    Needed {
        scope: Scope::Cli,
        grant: ("tokensync.io", "clientcredentials", "get", None),
        sites: &[("src/ops/status.rs", "let cc = api.get(name)"), ("src/ops/renew.rs", "let cc = api.get(&name)")],
    },
    Needed {
        scope: Scope::Cli,
        grant: ("tokensync.io", "clusterclientcredentials", "get", None),
        sites: &[("src/ops/status.rs", "let ccc = api.get(name)"), ("src/ops/renew.rs", "let ccc = api.get(&name)")],
    },
    Needed {
        scope: Scope::Cli,
        grant: ("tokensync.io", "clientcredentials", "list", None),
        sites: &[
            (
                "src/ops/renew.rs",
                "let list = api.list(&params).await.map_err(|e| missing_crd(conn, e, kind, \"list\", ns))",
            ),
            ("src/ops/renew.rs", "match await_condition(api, &t.name, handled)"),
        ],
    },
    Needed {
        scope: Scope::Cli,
        grant: ("tokensync.io", "clusterclientcredentials", "list", None),
        sites: &[
            (
                "src/ops/renew.rs",
                "let list = api.list(&params).await.map_err(|e| missing_crd(conn, e, kind, \"list\", None))",
            ),
            ("src/ops/renew.rs", "match await_condition(api, &t.name, handled)"),
        ],
    },
    Needed {
        scope: Scope::Cli,
        grant: ("tokensync.io", "clientcredentials", "watch", None),
        sites: &[("src/ops/renew.rs", "match await_condition(api, &t.name, handled)")],
    },
    Needed {
        scope: Scope::Cli,
        grant: ("tokensync.io", "clusterclientcredentials", "watch", None),
        sites: &[("src/ops/renew.rs", "match await_condition(api, &t.name, handled)")],
    },
    Needed {
        scope: Scope::Cli,
        grant: ("tokensync.io", "clientcredentials", "patch", None),
        sites: &[("src/ops/renew.rs", "api.patch(&t.name, &params, &Patch::Merge(&patch))")],
    },
    Needed {
        scope: Scope::Cli,
        grant: ("tokensync.io", "clusterclientcredentials", "patch", None),
        sites: &[("src/ops/renew.rs", "api.patch(&t.name, &params, &Patch::Merge(&patch))")],
    },
    Needed {
        scope: Scope::Cli,
        grant: ("", "secrets", "get", None),
        sites: &[("src/ops/status.rs", "match api.get_opt(&target)"), ("src/ops/status.rs", "match api.get_opt(name)")],
    },
    Needed {
        scope: Scope::Cli,
        grant: ("events.k8s.io", "events", "list", None),
        sites: &[("src/ops/status.rs", "match api.list(&ListParams::default())")],
    },
];

/// The permissions the table says are needed in `scope`, with `lease` as the Lease name.
pub fn needed(scope: Scope, lease: &str) -> BTreeSet<(String, String, String, Option<String>)> {
    NEEDED
        .iter()
        .filter(|n| n.scope == scope)
        .map(|n| {
            let (g, r, v, name) = n.grant;
            (g.to_owned(), r.to_owned(), v.to_owned(), name.map(|_| lease.to_owned()))
        })
        .collect()
}

/// Expands RBAC rules into single permissions. Fails on wildcards and on anything other
/// than resource rules: they could never be "exactly what the code calls".
pub fn granted(rules: &[PolicyRule], origin: &str) -> BTreeSet<(String, String, String, Option<String>)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        assert!(rule.non_resource_urls.is_none(), "{origin}: nonResourceURLs granted: {rule:?}");
        let groups = rule.api_groups.clone().unwrap_or_default();
        let resources = rule.resources.clone().unwrap_or_default();
        let names = rule.resource_names.clone().unwrap_or_default();
        assert!(!groups.is_empty() && !resources.is_empty() && !rule.verbs.is_empty(), "{origin}: empty rule {rule:?}");
        for field in groups.iter().chain(&resources).chain(&rule.verbs).chain(&names) {
            assert!(!field.contains('*'), "{origin}: wildcard in {rule:?}");
        }
        let names: Vec<Option<String>> =
            if names.is_empty() { vec![None] } else { names.into_iter().map(Some).collect() };
        for g in &groups {
            for r in &resources {
                for v in &rule.verbs {
                    for n in &names {
                        let new = out.insert((g.clone(), r.clone(), v.clone(), n.clone()));
                        assert!(new, "{origin}: {g}/{r} {v} granted twice");
                    }
                }
            }
        }
    }
    out
}

/// Strips what legitimately differs between the plain manifests and a Helm rendering:
/// labels (Helm adds its own) on objects and pod templates.
pub fn without_labels(mut json: Value) -> Value {
    if let Some(meta) = json["metadata"].as_object_mut() {
        meta.remove("labels");
    }
    if let Some(meta) = json.pointer_mut("/spec/template/metadata").and_then(Value::as_object_mut) {
        meta.remove("labels");
    }
    json
}

pub fn deployment(objects: &[Object]) -> &Deployment {
    let all: Vec<&Deployment> = objects
        .iter()
        .filter_map(|o| match o {
            Object::Deployment(d) => Some(&**d),
            _ => None,
        })
        .collect();
    assert_eq!(all.len(), 1, "exactly one Deployment");
    all[0]
}

/// The controller container's arguments.
pub fn args(objects: &[Object]) -> Vec<String> {
    let pod = deployment(objects).spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    pod.containers[0].args.clone().unwrap_or_default()
}

/// The namespaces given with --namespace, in order.
pub fn watched_namespaces(args: &[String]) -> Vec<String> {
    args.iter().filter_map(|a| a.strip_prefix("--namespace=")).map(str::to_owned).collect()
}
