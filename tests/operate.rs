//! `tokensync status` and `tokensync renew`, run as the real binary (and as the kubectl
//! plugin `kubectl-tokensync`) with a kubeconfig pointing at the API server double, while
//! the controller runs in-process against the same double and real token servers.

mod support;
mod token_server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use base64::Engine;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::apiserver::{ApiServer, Fault, Verb};
use support::controller::*;
use token_server::{Reply, TokenServer};
use tokensync::api::ClientCredential;

/// The access token the servers issue: a JWT whose claims `status` shows. Its signature
/// part is a marker that must never appear in any output.
const SIGNATURE: &str = "c2VjcmV0LXNpZ25hdHVyZS1uZXZlci1wcmludGVk";

fn jwt(n: u32) -> String {
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let header = b64(json!({"alg": "RS256", "typ": "JWT"}));
    let claims = b64(json!({
        "iss": "https://idp.example/realms/demo",
        "sub": "service-account-payments",
        "aud": ["https://api.example"],
        "scope": "payments:read",
        "exp": 4_102_444_800u64,
        "jti": format!("token-{n}"),
    }));
    format!("{header}.{claims}.{SIGNATURE}{n}")
}

/// A token server issuing JWTs; once `refuse` is set it answers invalid_client.
struct Idp {
    server: TokenServer,
    issued: Arc<AtomicU32>,
    refuse: Arc<AtomicU32>,
}

impl Idp {
    async fn start() -> Idp {
        let issued = Arc::new(AtomicU32::new(0));
        let refuse = Arc::new(AtomicU32::new(0));
        let (i, r) = (issued.clone(), refuse.clone());
        let server = TokenServer::start(move |_| {
            if r.load(Ordering::SeqCst) > 0 {
                return Reply::oauth_error(401, "invalid_client", "client authentication failed");
            }
            let n = i.fetch_add(1, Ordering::SeqCst) + 1;
            Reply::json(200, json!({"access_token": jwt(n), "token_type": "Bearer", "expires_in": 3600}))
        })
        .await;
        Idp { server, issued, refuse }
    }
}

/// A kubeconfig with one context for the double, its namespace team-a, plus a second
/// context pointing nowhere.
fn kubeconfig(dir: &Path, api_url: &str) -> PathBuf {
    let text = format!(
        r#"apiVersion: v1
kind: Config
current-context: double
clusters:
  - name: double
    cluster: {{server: "{api_url}"}}
  - name: nowhere
    cluster: {{server: "http://127.0.0.1:1"}}
users:
  - name: dev
    user: {{}}
contexts:
  - name: double
    context: {{cluster: double, user: dev, namespace: {NS}}}
  - name: nowhere
    context: {{cluster: nowhere, user: dev}}
"#
    );
    let path = dir.join("kubeconfig");
    std::fs::write(&path, text).unwrap();
    path
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `program args` with only the given kubeconfig (no $HOME config, no in-cluster
/// environment), debug logging on, so that the output checks cover the logs too.
async fn run_program(program: &Path, kubeconfig: &Path, args: &[&str]) -> Run {
    // The double and the controller run on this test's runtime: the child is waited for
    // on the blocking pool so that they keep answering it.
    let (program, kubeconfig) = (program.to_owned(), kubeconfig.to_owned());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&program)
            .args(&args)
            .env_clear()
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "debug")
            .env("HOME", kubeconfig.parent().unwrap())
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    };
    assert!(!run.stdout.contains(SIGNATURE) && !run.stderr.contains(SIGNATURE), "a token was printed");
    run
}

async fn tokensync(kubeconfig: &Path, args: &[&str]) -> Run {
    run_program(Path::new(env!("CARGO_BIN_EXE_tokensync")), kubeconfig, args).await
}

struct Setup {
    api: ApiServer,
    idp: Idp,
    _controller: Running,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

async fn setup() -> Setup {
    let api = api_server().await;
    let idp = Idp::start().await;
    let controller = start(&api, args(&[]));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig(dir.path(), &api.url());
    Setup { api, idp, _controller: controller, dir, kubeconfig }
}

async fn credential(s: &Setup, name: &str, labels: &[(&str, &str)]) {
    create_secret(&s.api, source_secret(&format!("{name}-client"), &[("client_id", "c"), ("client_secret", "s")]))
        .await;
    let mut cc = Cc::new(name, &s.idp.server.url("/token")).build();
    cc.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>());
    Api::<ClientCredential>::namespaced(s.api.client(), NS).create(&PostParams::default(), &cc).await.unwrap();
    wait_condition(&s.api, name, "Ready", ("True", "TokenIssued")).await;
}

fn annotation(api: &ApiServer, name: &str) -> Option<String> {
    let cc: ClientCredential = api.get(Some(NS), name)?;
    cc.metadata.annotations?.get("tokensync.io/renew-requested-at").cloned()
}

#[tokio::test]
async fn status_shows_conditions_times_target_keys_events_and_jwt_claims_but_never_the_token() {
    let s = setup().await;
    credential(&s, "payments", &[]).await;
    // The controller's first token is worth an Event; wait for it so the output is complete.
    s.api
        .wait_for(
            |v| {
                v.list::<k8s_openapi::api::events::v1::Event>(Some(NS))
                    .iter()
                    .any(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("payments"))
            },
            WAIT,
        )
        .await
        .expect("an Event about payments");

    let run = tokensync(&s.kubeconfig, &["status", "payments"]).await;
    // The README's "Operating tokensync" shows this output.
    println!("$ tokensync status payments\n{}", run.stdout);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = &run.stdout;
    for expected in [
        "Name:        payments\n",
        "Namespace:   team-a\n",
        "Kind:        ClientCredential\n",
        "Ready:       True (TokenIssued): the published token expires at ",
        "Degraded:    False (Healthy): the last renewal succeeded\n",
        "  Type:      Bearer\n",
        "  Issued:    ",
        "  Expires:   ",
        "(in ",
        "  Renews:    ",
        "Failures:    none since the last successful renewal\n",
        "Target:      Secret team-a/payments (keys: access_token, expires_at, token_type)\n",
        "  iss       https://idp.example/realms/demo\n",
        "  sub       service-account-payments\n",
        "  aud       https://api.example\n",
        "  scope     payments:read\n",
        "  exp       2100-01-01T00:00:00Z (in ",
        "Events:\n",
        "TokenIssued",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from:\n{out}");
    }
    assert!(!out.contains("jti") && !out.contains("token-1"), "only the identifying claims: {out}");
}

#[tokio::test]
async fn a_failed_renewal_exits_one_and_status_shows_the_reason_attempts_and_next_retry() {
    let s = setup().await;
    s.idp.refuse.store(1, Ordering::SeqCst);
    create_secret(&s.api, source_secret("payments-client", &[("client_id", "c"), ("client_secret", "s")])).await;
    Cc::new("payments", &s.idp.server.url("/token")).create(&s.api).await;
    wait_condition(&s.api, "payments", "Degraded", ("True", "TokenRequestRejected")).await;

    let run = tokensync(&s.kubeconfig, &["renew", "payments", "--wait", "--timeout", "20s"]).await;
    println!("$ tokensync renew payments --wait\n{}$ echo $?\n{}\n{}", run.stdout, run.code, run.stderr);
    assert_eq!(run.code, 1, "a failed renewal exits 1: {}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("renewal failed: ClientCredential team-a/payments: TokenRequestRejected: "),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("error: renewal failed for ClientCredential team-a/payments"), "{}", run.stderr);
    assert_eq!(s.idp.server.requests().len(), 2, "the renewal was one more request, despite the backoff");

    let run = tokensync(&s.kubeconfig, &["status", "payments"]).await;
    println!("$ tokensync status payments\n{}", run.stdout);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for expected in [
        "Ready:       False (TokenRequestRejected): ",
        "Degraded:    True (TokenRequestRejected): ",
        "Token:       none published yet\n",
        "Failures:    2 failed attempt(s) since the last successful renewal\n",
        "  Last:      ",
        "  Next try:  ",
        "Warning  TokenRequestRejected",
    ] {
        assert!(run.stdout.contains(expected), "{expected:?} missing from:\n{}", run.stdout);
    }
}

#[tokio::test]
async fn renew_wait_requests_one_renewal_with_an_rfc3339_annotation_and_exits_zero_when_it_is_done() {
    let s = setup().await;
    credential(&s, "payments", &[]).await;
    assert_eq!(s.idp.issued.load(Ordering::SeqCst), 1);

    let run = tokensync(&s.kubeconfig, &["renew", "payments", "--wait"]).await;
    println!("$ tokensync renew payments --wait\n{}", run.stdout);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let value = annotation(&s.api, "payments").expect("the annotation is set");
    assert!(value.parse::<jiff::Timestamp>().is_ok(), "{value} is an RFC 3339 time");
    assert!(
        run.stdout.starts_with(&format!(
            "renewal requested: ClientCredential team-a/payments (tokensync.io/renew-requested-at={value})\nrenewed: ClientCredential team-a/payments (new token expires at "
        )),
        "{}",
        run.stdout
    );
    assert_eq!(s.idp.issued.load(Ordering::SeqCst), 2, "exactly one more token request");
    assert_eq!(status(&s.api, "payments").unwrap().handled_renewal_request.as_deref(), Some(value.as_str()));
}

#[tokio::test]
async fn renew_selects_by_name_label_selector_or_all_without_waiting() {
    let s = setup().await;
    credential(&s, "payments", &[("team", "billing")]).await;
    credential(&s, "search", &[("team", "discovery")]).await;

    let run = tokensync(&s.kubeconfig, &["renew", "-l", "team=billing"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
    assert!(run.stdout.starts_with("renewal requested: ClientCredential team-a/payments"), "{}", run.stdout);
    assert!(annotation(&s.api, "payments").is_some() && annotation(&s.api, "search").is_none());

    let run = tokensync(&s.kubeconfig, &["renew", "--all", "-A"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 2, "{}", run.stdout);
    let search = annotation(&s.api, "search").expect("--all -A renews search too");
    assert_eq!(annotation(&s.api, "payments"), Some(search), "one request time for the whole batch");

    let run = tokensync(&s.kubeconfig, &["renew", "-l", "team=nobody"]).await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "no credentials matched: nothing to renew\n"));
}

#[tokio::test]
async fn as_a_kubectl_plugin_it_takes_kubectls_flags_and_names_itself_kubectl_tokensync() {
    let s = setup().await;
    credential(&s, "payments", &[]).await;
    let plugin = s.dir.path().join("kubectl-tokensync");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tokensync"), &plugin).unwrap();

    let help = run_program(&plugin, &s.kubeconfig, &["status", "--help"]).await;
    assert!(help.stdout.contains("Usage: kubectl tokensync status"), "{}", help.stdout);
    for flag in ["--kubeconfig", "--context", "--namespace", "-n"] {
        assert!(help.stdout.contains(flag), "{flag} missing from:\n{}", help.stdout);
    }
    let renew_help = run_program(&plugin, &s.kubeconfig, &["renew", "--help"]).await;
    assert!(renew_help.stdout.contains("-A, --all-namespaces"), "{}", renew_help.stdout);

    // --kubeconfig and --context override $KUBECONFIG's current context; -n its namespace.
    let other = s.dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let broken = other.join("kubeconfig");
    std::fs::write(&broken, "not: [a kubeconfig").unwrap();
    let config = s.kubeconfig.to_str().unwrap();
    let run =
        run_program(&plugin, &broken, &["status", "payments", "--kubeconfig", config, "--context", "double", "-n", NS])
            .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("Name:        payments\nNamespace:   team-a\n"), "{}", run.stdout);

    let run = run_program(&plugin, &s.kubeconfig, &["status", "payments", "-n", "default"]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains(r#"ClientCredential "payments" not found in namespace "default""#), "{}", run.stderr);
}

#[tokio::test]
async fn errors_say_whether_the_cluster_the_crd_the_object_or_a_permission_is_missing() {
    let s = setup().await;
    credential(&s, "payments", &[]).await;

    let run = tokensync(&s.kubeconfig, &["status", "payments", "--context", "nowhere"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("error: cannot reach the Kubernetes API server at http://127.0.0.1:1/"),
        "{}",
        run.stderr
    );

    let run = tokensync(&s.kubeconfig, &["status", "nope"]).await;
    assert_eq!(run.code, 2);
    assert_eq!(run.stderr.lines().last(), Some(r#"error: ClientCredential "nope" not found in namespace "team-a""#));

    let run = tokensync(&s.kubeconfig, &["renew", "clusterclientcredential/shared"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("error: the ClusterClientCredential CRD is not installed in this cluster"),
        "the double serves only the ClientCredential CRD: {}",
        run.stderr
    );

    s.api.inject(Fault::verbs(&[Verb::Get]).resource("clientcredentials").code(403).message(
        r#"clientcredentials.tokensync.io "payments" is forbidden: User "dev" cannot get resource "clientcredentials""#,
    ));
    let run = tokensync(&s.kubeconfig, &["status", "payments"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains(
            r#"error: forbidden: you may not get clientcredentials.tokensync.io in namespace "team-a"; ask for the RBAC permission `get` on `clientcredentials.tokensync.io`"#
        ),
        "{}",
        run.stderr
    );

    s.api.inject(Fault::verbs(&[Verb::Patch]).resource("clientcredentials").code(403));
    let run = tokensync(&s.kubeconfig, &["renew", "payments"]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("you may not patch clientcredentials.tokensync.io"), "{}", run.stderr);
    assert!(annotation(&s.api, "payments").is_none());

    // Without access to Secrets and Events, status still shows the credential and names
    // what it could not read.
    s.api.inject(Fault::verbs(&[Verb::Get]).resource("secrets").code(403).times(2));
    s.api.inject(Fault::verbs(&[Verb::List]).resource("events").code(403));
    let run = tokensync(&s.kubeconfig, &["status", "payments"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    for expected in [
        "Ready:       True (TokenIssued)",
        r#"Target:      Secret team-a/payments: forbidden: you may not get secrets in namespace "team-a""#,
        r#"JWT claims:  not shown: forbidden: you may not get secrets in namespace "team-a""#,
        r#"Events:      not shown: forbidden: you may not list events.events.k8s.io in namespace "team-a""#,
    ] {
        assert!(run.stdout.contains(expected), "{expected:?} missing from:\n{}", run.stdout);
    }
}

#[tokio::test]
async fn a_cluster_without_the_crds_is_named_as_such() {
    let api = ApiServer::builder().namespaces(&["default", NS]).start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &api.url());
    let run = tokensync(&config, &["status", "payments"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("error: the ClientCredential CRD is not installed in this cluster (the server does not serve clientcredentials.tokensync.io); install it with `tokensync crd | kubectl apply --server-side -f -`"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn status_of_a_cluster_client_credential_shows_its_namespaces_and_claims() {
    use k8s_openapi::api::core::v1::Namespace;
    use tokensync::api::ClusterClientCredential;
    let api = ApiServer::builder()
        .crd(&tokensync::api::crd())
        .crd(&tokensync::api::cluster::crd())
        .namespaces(&["default", NS, "listed"])
        .start()
        .await;
    let idp = Idp::start().await;
    let _controller = start(&api, args(&["--cluster-credentials"]));
    create_secret(&api, source_secret("shared-client", &[("client_id", "c"), ("client_secret", "s")])).await;
    let ccc: ClusterClientCredential = serde_json::from_value(json!({
        "apiVersion": "tokensync.io/v1alpha1", "kind": "ClusterClientCredential",
        "metadata": {"name": "shared"},
        "spec": {
            "tokenEndpoint": idp.server.url("/token"),
            "clientAuthentication": "client_secret_post",
            "credentialsRef": {"name": "shared-client", "namespace": NS},
            "target": {"name": "shared-token", "namespaces": ["listed"]}
        }
    }))
    .unwrap();
    Api::<ClusterClientCredential>::all(api.client()).create(&PostParams::default(), &ccc).await.unwrap();
    api.wait_for(
        |v| {
            let c: Option<ClusterClientCredential> = v.get(None, "shared");
            c.and_then(|c| c.status).is_some_and(|s| s.synced_namespaces == Some(1))
        },
        WAIT,
    )
    .await
    .expect("the ClusterClientCredential synced its namespace");
    assert!(api.get::<Namespace>(None, "listed").is_some());

    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &api.url());
    let run = tokensync(&config, &["status", "clusterclientcredential/shared"]).await;
    println!("$ tokensync status clusterclientcredential/shared\n{}", run.stdout);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for expected in [
        "Name:        shared\nKind:        ClusterClientCredential\n",
        "Ready:       True (TokenIssued)",
        "Target:      Secret shared-token in each selected namespace (keys: access_token, expires_at, token_type)\n",
        "Namespaces:  1 selected, 1 synced, 0 failed\n",
        "  sub       service-account-payments\n",
    ] {
        assert!(run.stdout.contains(expected), "{expected:?} missing from:\n{}", run.stdout);
    }
}
