//! The alerts (deploy/monitoring/prometheusrule.yaml) and the Grafana dashboard
//! (deploy/monitoring/tokensync-dashboard.json), checked with Prometheus' own PromQL parser
//! and rule evaluator: `promtool` from Debian's `prometheus` package (CI's .ci/run installs
//! it; these tests fail, never skip, without it). Every alert fires and stays quiet on
//! samples (tests/monitoring/alerts_test.yaml), every expression parses, and every metric
//! they name is in the /metrics of a controller that has done some work.

mod support;
mod token_server;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::apiserver::{ApiServer, Fault, Verb};
use support::controller::*;
use token_server::{Reply, TokenServer};
use tokensync::admin::{self, AdminState};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: not YAML: {e}"))
}

/// Runs promtool; panics with its output when it fails or is not installed.
fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("promtool").args(args).current_dir(dir).output().unwrap_or_else(|e| {
        panic!(
            "cannot run promtool ({e}): install it with `apt-get install --no-install-recommends prometheus` \
             (CI's .ci/run does)"
        )
    });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The PrometheusRule's groups, as the rules file promtool reads.
fn alert_groups() -> Value {
    let rule = yaml("deploy/monitoring/prometheusrule.yaml");
    assert_eq!(rule["kind"], "PrometheusRule");
    json!({"groups": rule["spec"]["groups"].clone()})
}

fn alerts() -> Vec<Value> {
    alert_groups()["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap().clone()).collect()
}

fn alert_names() -> BTreeSet<String> {
    alerts().iter().map(|r| r["alert"].as_str().expect("only alerting rules").to_owned()).collect()
}

/// JSON is YAML: the rules go to promtool as JSON.
fn write_rules(dir: &Path, name: &str, rules: &Value) {
    std::fs::write(dir.join(name), serde_json::to_string_pretty(rules).unwrap()).unwrap();
}

#[test]
fn every_alert_parses_and_fires_or_stays_quiet_as_its_promtool_tests_expect() {
    let dir = tempfile::tempdir().unwrap();
    write_rules(dir.path(), "alerts.yaml", &alert_groups());
    std::fs::write(dir.path().join("alerts_test.yaml"), read("tests/monitoring/alerts_test.yaml")).unwrap();
    let checked = promtool(dir.path(), &["check", "rules", "alerts.yaml"]);
    assert!(checked.contains(&format!("SUCCESS: {} rules found", alert_names().len())), "{checked}");
    let tested = promtool(dir.path(), &["test", "rules", "alerts_test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_alert_has_a_test_where_it_fires_and_one_where_it_stays_quiet() {
    let tests = yaml("tests/monitoring/alerts_test.yaml");
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for group in tests["tests"].as_array().unwrap() {
        for case in group["alert_rule_test"].as_array().unwrap() {
            let name = case["alertname"].as_str().unwrap().to_owned();
            let expected = case["exp_alerts"].as_array().map(Vec::len).unwrap_or(0);
            if expected > 0 {
                fires.insert(name)
            } else {
                quiet.insert(name)
            };
        }
    }
    let names = alert_names();
    assert_eq!(names.len(), 7);
    for name in &names {
        assert!(fires.contains(name), "no promtool test where {name} fires");
        assert!(quiet.contains(name), "no promtool test where {name} stays quiet");
    }
    assert!(fires.is_subset(&names) && quiet.is_subset(&names), "tests of alerts that do not exist");
}

/// GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to '-'.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_has_severity_summary_and_a_runbook_section_that_exists() {
    let runbook = read("docs/runbook.md");
    let anchors: BTreeSet<String> =
        runbook.lines().filter_map(|l| l.strip_prefix("## ").or_else(|| l.strip_prefix("### "))).map(anchor).collect();
    for rule in alerts() {
        let name = rule["alert"].as_str().unwrap();
        assert!(["warning", "critical"].contains(&rule["labels"]["severity"].as_str().unwrap_or_default()), "{name}");
        assert!(rule["annotations"]["summary"].is_string() && rule["annotations"]["description"].is_string(), "{name}");
        let url = rule["annotations"]["runbook_url"].as_str().unwrap_or_else(|| panic!("{name}: no runbook_url"));
        let (page, section) = url.split_once('#').unwrap_or_else(|| panic!("{name}: {url} names no section"));
        assert_eq!(page, "https://github.com/tokensync/tokensync/blob/main/docs/runbook.md", "{name}");
        assert_eq!(section, name.to_lowercase(), "{name}: the section is the alert's name");
        assert!(anchors.contains(section), "{name}: docs/runbook.md has no section #{section}");
    }
}

#[test]
fn the_chart_ships_the_same_alerts_and_dashboard_as_deploy_monitoring() {
    let chart_rules = yaml("deploy/helm/tokensync/files/alerts.yaml");
    assert_eq!(
        chart_rules,
        alert_groups(),
        "deploy/helm/tokensync/files/alerts.yaml != deploy/monitoring/prometheusrule.yaml"
    );
    assert_eq!(
        read("deploy/helm/tokensync/files/tokensync-dashboard.json"),
        read("deploy/monitoring/tokensync-dashboard.json"),
        "the chart's dashboard differs from deploy/monitoring's"
    );
    let kustomization = yaml("deploy/monitoring/kustomization.yaml");
    assert_eq!(kustomization["resources"], json!(["prometheusrule.yaml"]));
    let generator = &kustomization["configMapGenerator"][0];
    assert_eq!(generator["files"], json!(["tokensync.json=tokensync-dashboard.json"]));
    assert_eq!(generator["options"]["labels"]["grafana_dashboard"], "1");
}

/// Every PromQL query of the dashboard, with Grafana's variables replaced by what Grafana
/// substitutes, so that Prometheus' parser sees what Prometheus will get.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value =
        serde_json::from_str(&read("deploy/monitoring/tokensync-dashboard.json")).expect("the dashboard is valid JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap().to_owned();
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}: uses the datasource variable");
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{title}: no queries"));
        assert!(!targets.is_empty(), "{title}: no queries");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("{title}: a target without expr"));
            let expr = expr.replace("$__rate_interval", "2m").replace("$__interval", "1m").replace("$__range", "1h");
            assert!(!expr.contains('$'), "{title}: an unknown variable in {expr}");
            out.push((title.clone(), expr));
        }
    }
    out
}

#[test]
fn the_dashboard_is_valid_json_and_every_query_parses() {
    let dashboard: Value = serde_json::from_str(&read("deploy/monitoring/tokensync-dashboard.json")).unwrap();
    assert_eq!(dashboard["uid"], "tokensync");
    let titles: BTreeSet<&str> =
        dashboard["panels"].as_array().unwrap().iter().map(|p| p["title"].as_str().unwrap()).collect();
    for wanted in [
        "Credentials by state",
        "Time to expiry (closest first)",
        "Token requests by result and reason",
        "Renewal failures by reason",
        "Token request latency",
        "Reconcile errors by kind",
    ] {
        assert!(titles.contains(wanted), "no panel {wanted:?}");
    }
    // promtool parses recording rules as it parses alerts: one per query.
    let rules: Vec<Value> = dashboard_queries()
        .into_iter()
        .enumerate()
        .map(|(i, (_, expr))| json!({"record": format!("dashboard:query_{i}"), "expr": expr}))
        .collect();
    let count = rules.len();
    let dir = tempfile::tempdir().unwrap();
    write_rules(dir.path(), "dashboard.yaml", &json!({"groups": [{"name": "dashboard", "rules": rules}]}));
    let checked = promtool(dir.path(), &["check", "rules", "dashboard.yaml"]);
    assert!(checked.contains(&format!("SUCCESS: {count} rules found")), "{checked}");
}

/// Metric names in a PromQL expression (tokensync's, plus `up`-like built-ins we do not use).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("tokensync_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        // Inside a label value ("tokensync_..." in quotes) is not a metric.
        if start == 0 || bytes[start - 1] != b'"' {
            out.insert(expr[start..end].to_owned());
        }
        i = end;
    }
    out
}

/// Sample names /metrics can have: each sample's name, and each family's name with the
/// suffixes its type adds (so a counter that has not counted yet still counts as exported).
fn exported(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            names.insert(line.split(['{', ' ']).next().unwrap().to_owned());
        }
    }
    names
}

async fn admin_metrics(running: &Running) -> String {
    let state = AdminState { ready: running.ready.clone(), metrics: running.metrics.clone() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, admin::router(state)).await.unwrap() });
    reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn every_metric_the_alerts_and_the_dashboard_use_is_in_the_controllers_metrics() {
    let api = ApiServer::builder()
        .crd(&tokensync::api::crd())
        .crd(&tokensync::api::cluster::crd())
        .namespaces(&["default", NS])
        .start()
        .await;
    let server = TokenServer::start(|r| {
        if r.params().get("client_id").map(String::as_str) == Some("wrong") {
            return Reply::oauth_error(401, "invalid_client", "bad client");
        }
        Reply::json(200, json!({"access_token": "tok", "expires_in": 3600}))
    })
    .await;
    // One failed status write: a reconcile error, so that the error counter has a series.
    api.inject(Fault::verbs(&[Verb::Patch]).resource("clientcredentials").subresource("status").name("bad").code(500));
    let running = start(&api, args(&["--cluster-credentials"]));
    create_secret(&api, source_secret("good-client", &[("client_id", "c"), ("client_secret", "s")])).await;
    create_secret(&api, source_secret("bad-client", &[("client_id", "wrong"), ("client_secret", "s")])).await;
    Cc::new("good", &server.url("/token")).create(&api).await;
    Cc::new("bad", &server.url("/token")).create(&api).await;
    let ccc: tokensync::api::ClusterClientCredential = serde_json::from_value(json!({
        "apiVersion": "tokensync.io/v1alpha1", "kind": "ClusterClientCredential",
        "metadata": {"name": "shared"},
        "spec": {
            "tokenEndpoint": server.url("/token"),
            "clientAuthentication": "client_secret_post",
            "credentialsRef": {"name": "good-client", "namespace": NS},
            "target": {"name": "shared-token", "namespaces": ["listed"]}
        }
    }))
    .unwrap();
    let listed = Namespace {
        metadata: kube::api::ObjectMeta { name: Some("listed".into()), ..Default::default() },
        ..Default::default()
    };
    Api::<Namespace>::all(api.client()).create(&PostParams::default(), &listed).await.unwrap();
    Api::<tokensync::api::ClusterClientCredential>::all(api.client())
        .create(&PostParams::default(), &ccc)
        .await
        .unwrap();
    wait_condition(&api, "good", "Ready", ("True", "TokenIssued")).await;
    wait_condition(&api, "bad", "Degraded", ("True", "TokenRequestRejected")).await;
    api.wait_for(
        |v| {
            let c: Option<tokensync::api::ClusterClientCredential> = v.get(None, "shared");
            c.and_then(|c| c.status).is_some_and(|s| s.synced_namespaces == Some(1))
        },
        WAIT,
    )
    .await
    .expect("the ClusterClientCredential synced its namespace");
    // The gauges are set right after the status write the waits saw: wait for the last one.
    let metrics = running.metrics.clone();
    let gauges_set = || {
        let text = metrics.encode();
        text.contains("tokensync_cluster_credential_namespaces{name=\"shared\",state=\"synced\"} 1")
            && text.contains("tokensync_credential_degraded{namespace=\"team-a\",name=\"bad\"} 1")
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !gauges_set() {
        assert!(tokio::time::Instant::now() < deadline, "gauges never set:\n{}", metrics.encode());
        let n = metrics.reconciles();
        metrics.wait_for_reconciles(n + 1, std::time::Duration::from_secs(1)).await;
    }

    let text = admin_metrics(&running).await;
    // The status gauges follow the conditions, per credential.
    for line in [
        "tokensync_credential_ready{namespace=\"team-a\",name=\"good\"} 1",
        "tokensync_credential_degraded{namespace=\"team-a\",name=\"good\"} 0",
        "tokensync_credential_ready{namespace=\"team-a\",name=\"bad\"} 0",
        "tokensync_credential_degraded{namespace=\"team-a\",name=\"bad\"} 1",
        "tokensync_credential_ready{namespace=\"\",name=\"shared\"} 1",
        "tokensync_cluster_credential_namespaces{name=\"shared\",state=\"selected\"} 1",
        "tokensync_cluster_credential_namespaces{name=\"shared\",state=\"failed\"} 0",
        "tokensync_reconcile_errors_total{kind=\"kube\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing from /metrics:\n{text}");
    }
    assert!(text.contains("tokensync_credential_failed_attempts{namespace=\"team-a\",name=\"bad\"} "), "{text}");

    let exported = exported(&text);
    let mut used: Vec<(String, String)> = Vec::new();
    for rule in alerts() {
        let name = rule["alert"].as_str().unwrap().to_owned();
        used.extend(metric_names(rule["expr"].as_str().unwrap()).into_iter().map(|m| (name.clone(), m)));
    }
    for (title, expr) in dashboard_queries() {
        used.extend(metric_names(&expr).into_iter().map(|m| (format!("panel {title:?}"), m)));
    }
    assert!(used.len() > 20, "the metric name scan found too little: {used:?}");
    for (user, metric) in used {
        assert!(exported.contains(&metric), "{user} uses {metric}, which tokensync does not export:\n{text}");
    }
}
