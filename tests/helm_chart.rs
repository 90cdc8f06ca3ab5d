//! The Helm chart in deploy/helm/tokensync, rendered and linted by Helm's own engine: the
//! Helm v4 Go SDK, through helm-python-sdk from PyPI (no helm binary is needed). Install it
//! with `bash tests/helm/install.sh` (CI's .ci/run does); these tests fail, never skip, when
//! it is missing.
//!
//! The default rendering must equal the plain manifests in deploy/manifests where they
//! overlap, and watchNamespaces must equal deploy/manifests/namespaced: the two ways to
//! install cannot drift apart. Both are checked against the RBAC table in tests/deploy.

mod deploy;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use deploy::{LEASE, Object, SYSTEM_NAMESPACE, Scope};
use serde_json::{Value, json};

const CHART: &str = "deploy/helm/tokensync";
const RELEASE: &str = "tokensync";

fn venv() -> PathBuf {
    std::env::var_os("TOKENSYNC_HELM_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| deploy::repo().join("target").join("helm-venv"))
}

/// Runs tests/helm/render.py with Helm's engine; Err carries Helm's message.
fn helm(args: &[&str]) -> Result<Value, String> {
    let python = venv().join("bin").join("python");
    assert!(
        python.exists(),
        "Helm's chart engine is not installed ({} is missing): run `bash tests/helm/install.sh` \
         (it installs the pinned helm-python-sdk from PyPI into target/helm-venv, or into $TOKENSYNC_HELM_VENV)",
        python.display()
    );
    let out = Command::new(&python)
        .arg(deploy::repo().join("tests/helm/render.py"))
        .args(args)
        .current_dir(deploy::repo())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) => Ok(serde_json::from_slice(&out.stdout).unwrap()),
        Some(1) if stderr.starts_with("helm: ") => Err(stderr),
        _ => panic!(
            "tests/helm/render.py {args:?} failed (is helm-python-sdk installed? run `bash tests/helm/install.sh`):\n{stderr}"
        ),
    }
}

fn render_result(values: Value) -> Result<Vec<Object>, String> {
    let rendered = helm(&["render", CHART, RELEASE, SYSTEM_NAMESPACE, &values.to_string()])?;
    let mut objects = Vec::new();
    for (path, text) in rendered["manifests"].as_object().unwrap() {
        if path.ends_with("NOTES.txt") {
            continue;
        }
        objects.extend(deploy::parse(text.as_str().unwrap(), path));
    }
    Ok(objects)
}

fn render(values: Value) -> Vec<Object> {
    render_result(values).unwrap_or_else(|e| panic!("the chart does not render: {e}"))
}

fn manifests(dir: &str) -> Vec<Object> {
    let path = format!("{dir}/tokensync.yaml");
    deploy::parse(&deploy::read(&path), &path)
}

fn by_key(objects: &[Object]) -> BTreeMap<String, Value> {
    objects.iter().map(|o| (o.key(), deploy::without_labels(o.to_json()))).collect()
}

/// The chart renders the same objects as `dir`'s manifests (but the Namespace, which a Helm
/// release does not own), field for field, labels aside.
fn assert_same_as_manifests(chart: &[Object], dir: &str) {
    let chart = by_key(chart);
    let mut plain = by_key(&manifests(dir));
    plain.remove(&format!("Namespace/-/{SYSTEM_NAMESPACE}"));
    assert_eq!(chart.keys().collect::<Vec<_>>(), plain.keys().collect::<Vec<_>>(), "objects of the chart vs {dir}");
    for (key, object) in &plain {
        assert_eq!(&chart[key], object, "{key}: the chart's rendering differs from {dir}");
    }
}

#[test]
fn default_values_render_the_cluster_wide_manifests() {
    let objects = render(json!({}));
    assert_same_as_manifests(&objects, "deploy/manifests");
    // Helm's labels on every object, selector labels unchanged.
    for o in &objects {
        let labels = &o.to_json()["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm", "{}", o.key());
        assert_eq!(labels["app.kubernetes.io/instance"], RELEASE, "{}", o.key());
    }
}

#[test]
fn watch_namespaces_render_roles_only_like_the_namespaced_manifests() {
    let objects = render(json!({ "watchNamespaces": ["team-a", "team-b"] }));
    assert!(
        !objects.iter().any(|o| matches!(o, Object::ClusterRole(_) | Object::ClusterRoleBinding(_))),
        "watchNamespaces must not render cluster-wide RBAC"
    );
    assert_same_as_manifests(&objects, "deploy/manifests/namespaced");
    for ns in ["team-a", "team-b"] {
        let role = objects
            .iter()
            .find_map(|o| match o {
                Object::Role(r) if r.metadata.namespace.as_deref() == Some(ns) => Some(r),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no Role in {ns}"));
        let granted = deploy::granted(role.rules.as_deref().unwrap(), ns);
        assert_eq!(granted, deploy::needed(Scope::Watched, LEASE));
    }
}

#[test]
fn a_lease_name_reaches_both_the_flag_and_the_role() {
    let objects = render(json!({ "leaderElection": { "leaseName": "my-lease" } }));
    assert!(deploy::args(&objects).contains(&"--leader-election-lease=my-lease".to_owned()));
    let role = objects
        .iter()
        .find_map(|o| match o {
            Object::Role(r) => Some(r),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        deploy::granted(role.rules.as_deref().unwrap(), "leader election"),
        deploy::needed(Scope::Own, "my-lease")
    );
}

#[test]
fn values_reach_the_deployment() {
    let objects = render(json!({
        "image": { "repository": "registry.example/tokensync", "tag": "dev", "pullPolicy": "Always" },
        "replicaCount": 3,
        "logFormat": "text",
        "initialList": "streaming",
        "logLevel": "warn,tokensync=debug",
        "extraArgs": ["--allow-http", "--backoff-max=10m"],
        "adminPort": 9090,
        "nodeSelector": { "kubernetes.io/os": "linux" },
        "tolerations": [{ "key": "dedicated", "operator": "Exists", "effect": "NoSchedule" }],
        "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{ "matchExpressions": [{ "key": "pool", "operator": "In", "values": ["infra"] }] }] } } },
        "podAnnotations": { "example.com/team": "platform" },
        "resources": { "requests": { "cpu": "10m", "memory": "32Mi" } },
    }));
    let d = deploy::deployment(&objects);
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    let template = &spec.template;
    assert_eq!(template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()["example.com/team"], "platform");
    let pod = template.spec.as_ref().unwrap();
    assert_eq!(pod.node_selector.as_ref().unwrap()["kubernetes.io/os"], "linux");
    assert_eq!(pod.tolerations.as_ref().unwrap()[0].key.as_deref(), Some("dedicated"));
    assert!(pod.affinity.as_ref().unwrap().node_affinity.is_some());
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("registry.example/tokensync:dev"));
    assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
    assert_eq!(
        c.args.as_deref().unwrap(),
        [
            "controller",
            "--leader-elect",
            "--log-format=text",
            "--initial-list=streaming",
            "--admin-addr=0.0.0.0:9090",
            "--allow-http",
            "--backoff-max=10m"
        ]
    );
    let rust_log = c.env.iter().flatten().find(|e| e.name == "RUST_LOG").unwrap();
    assert_eq!(rust_log.value.as_deref(), Some("warn,tokensync=debug"));
    assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 9090);
    // Helm merges maps with the defaults: the requests changed, the default limits stay
    // (`limits: null` would remove them).
    let resources = c.resources.as_ref().unwrap();
    assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "10m");
    assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "256Mi");
    // Every flag the chart passes is one the controller has.
    let help = Command::new(env!("CARGO_BIN_EXE_tokensync")).args(["controller", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for arg in &c.args.as_deref().unwrap()[1..] {
        let flag = arg.split('=').next().unwrap();
        assert!(help.split_whitespace().any(|w| w == flag), "{flag} is not a flag of `tokensync controller`");
    }
}

#[test]
fn the_service_monitor_scrapes_the_metrics_service() {
    assert!(!render(json!({})).iter().any(|o| matches!(o, Object::ServiceMonitor(_))), "off by default");
    let objects =
        render(json!({ "metrics": { "serviceMonitor": { "enabled": true, "labels": { "release": "prom" } } } }));
    let monitor = objects
        .iter()
        .find_map(|o| match o {
            Object::ServiceMonitor(m) => Some(m),
            _ => None,
        })
        .expect("a ServiceMonitor");
    assert_eq!(monitor.metadata.labels.as_ref().unwrap()["release"], "prom");
    let service = objects
        .iter()
        .find_map(|o| match o {
            Object::Service(s) => Some(s),
            _ => None,
        })
        .unwrap();
    let service_labels = service.metadata.labels.as_ref().unwrap();
    let selector = monitor.spec.selector.match_labels.as_ref().unwrap();
    assert!(selector.iter().all(|(k, v)| service_labels.get(k) == Some(v)), "the ServiceMonitor selects the Service");
    assert_eq!(monitor.spec.namespace_selector.match_names, [SYSTEM_NAMESPACE]);
    let port = &monitor.spec.endpoints[0];
    assert_eq!(port.path, "/metrics");
    let names: Vec<_> = service.spec.as_ref().unwrap().ports.iter().flatten().filter_map(|p| p.name.clone()).collect();
    assert!(names.contains(&port.port), "the ServiceMonitor's port is a port of the Service");

    let err =
        render_result(json!({ "metrics": { "service": { "enabled": false }, "serviceMonitor": { "enabled": true } } }))
            .unwrap_err();
    assert!(err.contains("metrics.service.enabled"), "{err}");
}

#[test]
fn a_single_replica_has_no_disruption_budget_and_several_need_leader_election() {
    let one = render(json!({ "replicaCount": 1, "leaderElection": { "enabled": false } }));
    assert!(!one.iter().any(|o| matches!(o, Object::PodDisruptionBudget(_))), "minAvailable 1 of 1 would block drains");
    assert!(!deploy::args(&one).contains(&"--leader-elect".to_owned()));
    assert!(!one.iter().any(|o| matches!(o, Object::Role(_))), "no Lease, no leader election Role");

    let err = render_result(json!({ "replicaCount": 2, "leaderElection": { "enabled": false } })).unwrap_err();
    assert!(err.contains("leaderElection.enabled"), "{err}");
    let err = render_result(json!({ "logFormat": "yaml" })).unwrap_err();
    assert!(err.contains("logFormat"), "{err}");
}

#[test]
fn without_rbac_or_service_account_creation_the_chart_renders_neither() {
    let objects =
        render(json!({ "rbac": { "create": false }, "serviceAccount": { "create": false, "name": "existing" } }));
    let kinds: Vec<&str> = objects.iter().map(Object::kind).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"].contains(k))
            .count(),
        0,
        "{kinds:?}"
    );
    let pod = deploy::deployment(&objects).spec.as_ref().unwrap().template.spec.clone().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("existing"));
}

#[test]
fn helm_lint_finds_nothing_to_warn_about() {
    for values in [
        json!({}),
        json!({ "watchNamespaces": ["team-a"] }),
        json!({ "metrics": { "serviceMonitor": { "enabled": true } } }),
    ] {
        let report = helm(&["lint", CHART, &values.to_string()]).unwrap();
        // Severity 1 is informational ("icon is recommended"); 2 and above are warnings and errors.
        let problems: Vec<&Value> =
            report["messages"].as_array().unwrap().iter().filter(|m| m["severity"].as_i64().unwrap() >= 2).collect();
        assert!(problems.is_empty(), "helm lint with {values}: {problems:?}");
        assert_eq!(report["errors"], json!([]), "helm lint with {values}");
    }
}

#[test]
fn chart_versions_follow_the_crate() {
    let chart: Value = serde_saphyr::from_str(&deploy::read(format!("{CHART}/Chart.yaml"))).unwrap();
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"), "Chart.yaml appVersion");
    assert_eq!(chart["version"], env!("CARGO_PKG_VERSION"), "Chart.yaml version");
}

/// Helm installs crds/ on first install only, and never templates it: it must be a copy of
/// the repository's generated CRD, byte for byte.
#[test]
fn chart_crds_are_identical_to_the_repository_crds() {
    let list = |dir: &str| -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(deploy::repo().join(dir))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap())
            })
            .collect()
    };
    let repo = list("crds");
    let chart = list(&format!("{CHART}/crds"));
    assert_eq!(
        repo.keys().collect::<Vec<_>>(),
        chart.keys().collect::<Vec<_>>(),
        "deploy/helm/tokensync/crds must hold the same files as crds/"
    );
    for (name, bytes) in &repo {
        assert!(&chart[name] == bytes, "{CHART}/crds/{name} differs from crds/{name}: cp crds/{name} {CHART}/crds/");
    }
}

#[test]
fn cluster_credentials_add_the_flag_and_a_cluster_role_for_exactly_what_they_call() {
    let objects = render(json!({ "clusterCredentials": { "enabled": true } }));
    assert!(deploy::args(&objects).contains(&"--cluster-credentials".to_owned()));
    let role = objects
        .iter()
        .find_map(|o| match o {
            Object::ClusterRole(r) if r.metadata.name.as_deref() == Some("tokensync-cluster-credentials") => Some(r),
            _ => None,
        })
        .expect("the cluster-credentials ClusterRole");
    assert_eq!(
        deploy::granted(role.rules.as_deref().unwrap(), "cluster credentials"),
        deploy::needed(Scope::ClusterCredentials, LEASE)
    );
    // Off by default: the default rendering is the plain cluster-wide install.
    assert!(!deploy::args(&render(json!({}))).contains(&"--cluster-credentials".to_owned()));
    // It needs cluster-wide Secret access: with watchNamespaces the chart refuses to render.
    let refused = render_result(json!({ "clusterCredentials": { "enabled": true }, "watchNamespaces": ["team-a"] }));
    assert!(refused.is_err_and(|e| e.contains("clusterCredentials.enabled needs the cluster-wide install")));
}

#[test]
fn alerts_and_dashboard_are_opt_in_and_render_the_files_of_deploy_monitoring() {
    let off = render(json!({}));
    assert!(!off.iter().any(|o| matches!(o, Object::PrometheusRule(_) | Object::ConfigMap(_))), "off by default");

    let on = render(json!({
        "prometheusRule": {"enabled": true, "labels": {"release": "kube-prometheus-stack"}},
        "dashboard": {"enabled": true, "namespace": "monitoring", "annotations": {"grafana_folder": "Platform"}},
    }));
    let plain = deploy::parse(&deploy::read("deploy/monitoring/prometheusrule.yaml"), "deploy/monitoring");
    let [Object::PrometheusRule(plain)] = plain.as_slice() else { panic!("deploy/monitoring: one PrometheusRule") };
    let rule = on
        .iter()
        .find_map(|o| match o {
            Object::PrometheusRule(r) => Some(r),
            _ => None,
        })
        .expect("a PrometheusRule");
    assert_eq!(rule.spec, plain.spec, "the chart's alerts equal deploy/monitoring/prometheusrule.yaml");
    assert_eq!(rule.metadata.namespace.as_deref(), Some(SYSTEM_NAMESPACE));
    let labels = rule.metadata.labels.clone().unwrap();
    assert_eq!(labels.get("release").map(String::as_str), Some("kube-prometheus-stack"));

    let dashboard = on
        .iter()
        .find_map(|o| match o {
            Object::ConfigMap(c) => Some(c),
            _ => None,
        })
        .expect("a dashboard ConfigMap");
    assert_eq!(dashboard.metadata.namespace.as_deref(), Some("monitoring"));
    assert_eq!(dashboard.metadata.labels.as_ref().unwrap().get("grafana_dashboard").map(String::as_str), Some("1"));
    assert_eq!(
        dashboard.metadata.annotations.as_ref().unwrap().get("grafana_folder").map(String::as_str),
        Some("Platform")
    );
    let json = &dashboard.data.as_ref().unwrap()["tokensync.json"];
    assert_eq!(format!("{json}\n"), deploy::read("deploy/monitoring/tokensync-dashboard.json"));

    // A fork or mirror of the docs: every runbook link follows.
    let mirrored = render(json!({
        "prometheusRule": {"enabled": true, "runbookBaseUrl": "https://docs.internal/tokensync/runbook"},
    }));
    let rule = mirrored
        .iter()
        .find_map(|o| match o {
            Object::PrometheusRule(r) => Some(r),
            _ => None,
        })
        .unwrap();
    for r in rule.spec.groups.iter().flat_map(|g| &g.rules) {
        let url = &r.annotations["runbook_url"];
        assert_eq!(url, &format!("https://docs.internal/tokensync/runbook#{}", r.alert.to_lowercase()));
    }
}
