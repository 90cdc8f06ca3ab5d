//! `tokensync status` and `tokensync renew` as an operator runs them: `kubectl tokensync
//! ...`, the real kubectl finding the plugin `kubectl-tokensync` (a symlink to the built
//! binary) on PATH, against a real Kubernetes control plane (`tests/support/control_plane.rs`)
//! with a kubeconfig whose context is the test's namespace. The controller runs in-process
//! against the same control plane, with real token servers; permissions are real RBAC for
//! client-certificate users.
//!
//! Most tests share this binary's control plane, each in a namespace of its own. Three have
//! one of their own ([`ControlPlane::dedicated`]): `renew --all -A` renews every credential
//! in the cluster, a controller with --cluster-credentials reconciles every credential in
//! the cluster (either would act on the other tests' credentials), and a cluster without the
//! CRDs has them deleted.

mod support;
mod token_server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use base64::Engine;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::Kubeconfig;
use kube::runtime::wait::await_condition;
use serde_json::{Value, json};
use support::control_plane::{ControlPlane, bin_dir};
use support::controller::{Cc, Running, args};
use support::real::{Env, WAIT};
use token_server::{Reply, TokenServer};
use tokensync::api::{ClientCredential, ClusterClientCredential};

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

/// The name of the kubeconfig context for the test's cluster and namespace.
const CONTEXT: &str = "real";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `kubectl tokensync`: a folder holding only the plugin, the sole entry of PATH.
struct Plugin {
    dir: tempfile::TempDir,
}

impl Plugin {
    fn install() -> Plugin {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tokensync"), dir.path().join("bin/kubectl-tokensync")).unwrap();
        Plugin { dir }
    }

    /// A copy of `source` (a kubeconfig the control plane wrote) whose current context,
    /// renamed [`CONTEXT`], has namespace `namespace`, plus a context `nowhere` for the same
    /// user and a server that does not answer. Written as JSON, which kubeconfig readers take.
    fn kubeconfig(&self, source: &Path, namespace: &str, file: &str) -> PathBuf {
        let mut config = serde_json::to_value(Kubeconfig::read_from(source).unwrap()).unwrap();
        let current = config["current-context"].as_str().unwrap().to_owned();
        let contexts = config["contexts"].as_array_mut().unwrap();
        let context = contexts.iter_mut().find(|c| c["name"] == current.as_str()).unwrap();
        context["name"] = CONTEXT.into();
        context["context"]["namespace"] = namespace.into();
        let user = context["context"]["user"].clone();
        contexts.push(json!({"name": "nowhere", "context": {"cluster": "nowhere", "user": user}}));
        config["clusters"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "nowhere", "cluster": {"server": "http://127.0.0.1:1"}}));
        config["current-context"] = CONTEXT.into();
        let path = self.dir.path().join(file);
        std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        path
    }

    /// Runs `kubectl tokensync ARGS` with the real kubectl, with only the given kubeconfig
    /// (no $HOME config, no in-cluster environment) and the plugin on PATH, debug logging
    /// on, so that the output checks cover the logs too.
    async fn run(&self, kubeconfig: &Path, args: &[&str]) -> Run {
        // The controller runs on this test's runtime: the child is waited for on the
        // blocking pool so that it keeps running.
        let (home, kubeconfig) = (self.dir.path().to_owned(), kubeconfig.to_owned());
        let args: Vec<String> = std::iter::once("tokensync").chain(args.iter().copied()).map(str::to_owned).collect();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(bin_dir().join("kubectl"))
                .args(&args)
                .env_clear()
                .env("PATH", home.join("bin"))
                .env("KUBECONFIG", &kubeconfig)
                .env("RUST_LOG", "debug")
                .env("HOME", &home)
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
}

struct Setup {
    env: Env,
    idp: Idp,
    _controller: Running,
    plugin: Plugin,
    /// The admin's kubeconfig, its context in the test's namespace.
    kubeconfig: PathBuf,
    _stopper: PlaneStopper,
}

/// A namespace on this binary's control plane, the controller for it, a token server and
/// the plugin.
async fn setup() -> Setup {
    setup_on(Env::new("operate").await, PlaneStopper(None)).await
}

/// The same on a control plane of the test's own.
async fn setup_dedicated() -> Setup {
    let plane = ControlPlane::dedicated();
    setup_on(Env::on(plane.clone(), "operate").await, PlaneStopper(Some(plane))).await
}

async fn setup_on(env: Env, stopper: PlaneStopper) -> Setup {
    let idp = Idp::start().await;
    let controller = env.start(args(&[])).await;
    let plugin = Plugin::install();
    let kubeconfig = plugin.kubeconfig(env.plane.kubeconfig(), &env.ns, "kubeconfig");
    Setup { env, idp, _controller: controller, plugin, kubeconfig, _stopper: stopper }
}

/// Holds the last handle of a dedicated control plane; dropped (after everything else in
/// [`Setup`]), it stops the control plane on a thread of its own: stopping takes seconds
/// (the launcher's orderly stop), which the test need not wait for, and which nothing
/// outlives (the launcher stops everything once its stdin is closed).
struct PlaneStopper(Option<ControlPlane>);

impl Drop for PlaneStopper {
    fn drop(&mut self) {
        if let Some(plane) = self.0.take() {
            std::thread::spawn(move || drop(plane));
        }
    }
}

impl Setup {
    async fn kubectl_tokensync(&self, args: &[&str]) -> Run {
        self.plugin.run(&self.kubeconfig, args).await
    }

    async fn credential(&self, name: &str, labels: &[(&str, &str)]) {
        self.create_credential(name, labels).await;
        self.env.wait_condition(name, "Ready", ("True", "TokenIssued")).await;
    }

    async fn create_credential(&self, name: &str, labels: &[(&str, &str)]) {
        self.env.create_secret(&format!("{name}-client"), &[("client_id", "c"), ("client_secret", "s")]).await;
        let mut cc = Cc::new(name, &self.idp.server.url("/token")).namespace(&self.env.ns).build();
        cc.metadata.labels =
            Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>());
        self.env.ccs().create(&PostParams::default(), &cc).await.unwrap();
    }

    async fn annotation(&self, name: &str) -> Option<String> {
        let cc: ClientCredential = self.env.cc(name).await?;
        cc.metadata.annotations?.get("tokensync.io/renew-requested-at").cloned()
    }
}

#[tokio::test]
async fn status_shows_conditions_times_target_keys_events_and_jwt_claims_but_never_the_token() {
    let s = setup().await;
    let ns = s.env.ns.clone();
    s.credential("payments", &[]).await;
    // The controller's first token is worth an Event; wait for it so the output is complete.
    s.env
        .wait_events("said anything about payments", |all| all.iter().any(|e| e["regarding"]["name"] == "payments"))
        .await;

    let run = s.kubectl_tokensync(&["status", "payments"]).await;
    // The README's "Operating tokensync" shows this output.
    println!("$ kubectl tokensync status payments\n{}", run.stdout);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = &run.stdout;
    for expected in [
        "Name:        payments\n",
        &format!("Namespace:   {ns}\n"),
        "Kind:        ClientCredential\n",
        "Ready:       True (TokenIssued): the published token expires at ",
        "Degraded:    False (Healthy): the last renewal succeeded\n",
        "  Type:      Bearer\n",
        "  Issued:    ",
        "  Expires:   ",
        "(in ",
        "  Renews:    ",
        "Failures:    none since the last successful renewal\n",
        &format!("Target:      Secret {ns}/payments (keys: access_token, expires_at, token_type)\n"),
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
    let ns = s.env.ns.clone();
    s.idp.refuse.store(1, Ordering::SeqCst);
    s.create_credential("payments", &[]).await;
    s.env.wait_condition("payments", "Degraded", ("True", "TokenRequestRejected")).await;

    let run = s.kubectl_tokensync(&["renew", "payments", "--wait", "--timeout", "20s"]).await;
    println!("$ kubectl tokensync renew payments --wait\n{}$ echo $?\n{}\n{}", run.stdout, run.code, run.stderr);
    assert_eq!(run.code, 1, "a failed renewal exits 1: {}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(&format!("renewal failed: ClientCredential {ns}/payments: TokenRequestRejected: ")),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains(&format!("error: renewal failed for ClientCredential {ns}/payments")),
        "{}",
        run.stderr
    );
    assert_eq!(s.idp.server.requests().len(), 2, "the renewal was one more request, despite the backoff");

    let run = s.kubectl_tokensync(&["status", "payments"]).await;
    println!("$ kubectl tokensync status payments\n{}", run.stdout);
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
    let ns = s.env.ns.clone();
    s.credential("payments", &[]).await;
    assert_eq!(s.idp.issued.load(Ordering::SeqCst), 1);

    let run = s.kubectl_tokensync(&["renew", "payments", "--wait"]).await;
    println!("$ kubectl tokensync renew payments --wait\n{}", run.stdout);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let value = s.annotation("payments").await.expect("the annotation is set");
    assert!(value.parse::<jiff::Timestamp>().is_ok(), "{value} is an RFC 3339 time");
    assert!(
        run.stdout.starts_with(&format!(
            "renewal requested: ClientCredential {ns}/payments (tokensync.io/renew-requested-at={value})\nrenewed: ClientCredential {ns}/payments (new token expires at "
        )),
        "{}",
        run.stdout
    );
    assert_eq!(s.idp.issued.load(Ordering::SeqCst), 2, "exactly one more token request");
    assert_eq!(s.env.status("payments").await.unwrap().handled_renewal_request.as_deref(), Some(value.as_str()));
}

/// On a control plane of its own: `--all -A` renews every credential in the cluster.
#[tokio::test]
async fn renew_selects_by_name_label_selector_or_all_without_waiting() {
    let s = setup_dedicated().await;
    let ns = s.env.ns.clone();
    s.credential("payments", &[("team", "billing")]).await;
    s.credential("search", &[("team", "discovery")]).await;

    let run = s.kubectl_tokensync(&["renew", "-l", "team=billing"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
    assert!(run.stdout.starts_with(&format!("renewal requested: ClientCredential {ns}/payments")), "{}", run.stdout);
    assert!(s.annotation("payments").await.is_some() && s.annotation("search").await.is_none());

    let run = s.kubectl_tokensync(&["renew", "--all", "-A"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 2, "{}", run.stdout);
    let search = s.annotation("search").await.expect("--all -A renews search too");
    assert_eq!(s.annotation("payments").await, Some(search), "one request time for the whole batch");

    let run = s.kubectl_tokensync(&["renew", "-l", "team=nobody"]).await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "no credentials matched: nothing to renew\n"));
}

#[tokio::test]
async fn as_a_kubectl_plugin_it_takes_kubectls_flags_and_names_itself_kubectl_tokensync() {
    let s = setup().await;
    let ns = s.env.ns.clone();
    s.credential("payments", &[]).await;

    let help = s.kubectl_tokensync(&["status", "--help"]).await;
    assert!(help.stdout.contains("Usage: kubectl tokensync status"), "{}", help.stdout);
    for flag in ["--kubeconfig", "--context", "--namespace", "-n"] {
        assert!(help.stdout.contains(flag), "{flag} missing from:\n{}", help.stdout);
    }
    let renew_help = s.kubectl_tokensync(&["renew", "--help"]).await;
    assert!(renew_help.stdout.contains("-A, --all-namespaces"), "{}", renew_help.stdout);

    // --kubeconfig and --context override $KUBECONFIG's current context; -n its namespace.
    let broken = s.plugin.dir.path().join("broken-kubeconfig");
    std::fs::write(&broken, "not: [a kubeconfig").unwrap();
    let other = s.plugin.kubeconfig(s.env.plane.kubeconfig(), "default", "other-kubeconfig");
    let run = s
        .plugin
        .run(&broken, &["status", "payments", "--kubeconfig", other.to_str().unwrap(), "--context", CONTEXT, "-n", &ns])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with(&format!("Name:        payments\nNamespace:   {ns}\n")), "{}", run.stdout);

    let run = s.kubectl_tokensync(&["status", "payments", "-n", "default"]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains(r#"ClientCredential "payments" not found in namespace "default""#), "{}", run.stderr);
}

/// Creates a Role in the test's namespace with `rules` and binds it to `group`; returns once
/// the API server's authorizer grants the group the first rule's first verb.
async fn grant(env: &Env, group: &str, rules: Value) {
    let role: Role = serde_json::from_value(json!({"metadata": {"name": group}, "rules": rules})).unwrap();
    env.api::<Role>().create(&PostParams::default(), &role).await.unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": group},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": group},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
    }))
    .unwrap();
    env.api::<RoleBinding>().create(&PostParams::default(), &binding).await.unwrap();
    // RBAC changes reach the authorizer through its informers; nothing announces that they
    // have, so ask it (SubjectAccessReview) until it says yes.
    let review: SubjectAccessReview = serde_json::from_value(json!({"spec": {
        "groups": [group, "system:authenticated"],
        "user": "anyone",
        "resourceAttributes": {
            "namespace": env.ns,
            "verb": rules[0]["verbs"][0],
            "group": rules[0]["apiGroups"][0],
            "resource": rules[0]["resources"][0],
        },
    }}))
    .unwrap();
    let reviews: Api<SubjectAccessReview> = Api::all(env.client.clone());
    let allowed = tokio::time::timeout(WAIT, async {
        loop {
            let answer = reviews.create(&PostParams::default(), &review).await.unwrap();
            if answer.status.is_some_and(|s| s.allowed) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(allowed.is_ok(), "the authorizer never granted {group} {rules}");
}

#[tokio::test]
async fn errors_say_whether_the_cluster_the_object_or_a_permission_is_missing() {
    let s = setup().await;
    let ns = s.env.ns.clone();
    s.credential("payments", &[]).await;

    let run = s.kubectl_tokensync(&["status", "payments", "--context", "nowhere"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("error: cannot reach the Kubernetes API server at http://127.0.0.1:1/"),
        "{}",
        run.stderr
    );

    let run = s.kubectl_tokensync(&["status", "nope"]).await;
    assert_eq!(run.code, 2);
    assert_eq!(
        run.stderr.lines().last(),
        Some(format!(r#"error: ClientCredential "nope" not found in namespace "{ns}""#).as_str())
    );

    // A user the cluster knows (a client certificate) without any RBAC permission.
    let nobody = s.env.plane.user_kubeconfig(&format!("{ns}-nobody"), &[&format!("{ns}-nobodies")]);
    let nobody = s.plugin.kubeconfig(&nobody, &ns, "nobody-kubeconfig");
    let run = s.plugin.run(&nobody, &["status", "payments"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains(&format!(
            r#"error: forbidden: you may not get clientcredentials.tokensync.io in namespace "{ns}"; ask for the RBAC permission `get` on `clientcredentials.tokensync.io`"#
        )),
        "{}",
        run.stderr
    );

    // A user whose group may read ClientCredentials, and nothing else.
    let readers = format!("{ns}-readers");
    grant(
        &s.env,
        &readers,
        json!([{"apiGroups": ["tokensync.io"], "resources": ["clientcredentials"], "verbs": ["get", "list", "watch"]}]),
    )
    .await;
    let reader = s.env.plane.user_kubeconfig(&format!("{ns}-reader"), &[&readers]);
    let reader = s.plugin.kubeconfig(&reader, &ns, "reader-kubeconfig");
    let run = s.plugin.run(&reader, &["renew", "payments"]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("you may not patch clientcredentials.tokensync.io"), "{}", run.stderr);
    assert!(s.annotation("payments").await.is_none());

    // Without access to Secrets and Events, status still shows the credential and names
    // what it could not read.
    let run = s.plugin.run(&reader, &["status", "payments"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    for expected in [
        "Ready:       True (TokenIssued)".to_owned(),
        format!(r#"Target:      Secret {ns}/payments: forbidden: you may not get secrets in namespace "{ns}""#),
        format!(r#"JWT claims:  not shown: forbidden: you may not get secrets in namespace "{ns}""#),
        format!(r#"Events:      not shown: forbidden: you may not list events.events.k8s.io in namespace "{ns}""#),
    ] {
        assert!(run.stdout.contains(&expected), "{expected:?} missing from:\n{}", run.stdout);
    }
}

/// Deletes a CRD and waits until the API server no longer serves its resource.
async fn delete_crd(env: &Env, name: &str, path: &str) {
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    crds.delete(name, &DeleteParams::default()).await.unwrap();
    let gone = tokio::time::timeout(WAIT, await_condition(crds.clone(), name, |c: Option<&_>| c.is_none())).await;
    assert!(gone.is_ok(), "CRD {name} was never deleted: {:#?}", crds.get_opt(name).await);
    // The CRD is gone; its route goes with it as the API server's own informer sees that.
    let served = || async {
        let request = http::Request::get(path).body(Vec::new()).unwrap();
        !matches!(env.client.request_text(request).await, Err(kube::Error::Api(s)) if s.code == 404)
    };
    let unserved = tokio::time::timeout(WAIT, async {
        while served().await {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(unserved.is_ok(), "{path} is still served after CRD {name} was deleted");
}

/// On a control plane of its own, whose CRDs it deletes.
#[tokio::test]
async fn a_cluster_without_the_crds_is_named_as_such() {
    let plane = ControlPlane::dedicated();
    let _stopper = PlaneStopper(Some(plane.clone()));
    let env = Env::on(plane, "operate").await;
    let plugin = Plugin::install();
    let config = plugin.kubeconfig(env.plane.kubeconfig(), &env.ns, "kubeconfig");
    delete_crd(&env, "clusterclientcredentials.tokensync.io", "/apis/tokensync.io/v1alpha1/clusterclientcredentials")
        .await;
    let run = plugin.run(&config, &["renew", "clusterclientcredential/shared"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("error: the ClusterClientCredential CRD is not installed in this cluster"),
        "only the ClientCredential CRD is installed: {}",
        run.stderr
    );

    delete_crd(&env, "clientcredentials.tokensync.io", "/apis/tokensync.io/v1alpha1/clientcredentials").await;
    let run = plugin.run(&config, &["status", "payments"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("error: the ClientCredential CRD is not installed in this cluster (the server does not serve clientcredentials.tokensync.io); install it with `tokensync crd | kubectl apply --server-side -f -`"),
        "{}",
        run.stderr
    );
}

/// On a control plane of its own: a controller with --cluster-credentials reconciles every
/// credential in the cluster.
#[tokio::test]
async fn status_of_a_cluster_client_credential_shows_its_namespaces_and_claims() {
    let plane = ControlPlane::dedicated();
    let _stopper = PlaneStopper(Some(plane.clone()));
    let env = Env::on(plane, "operate").await;
    let idp = Idp::start().await;
    let _controller = env.start_unscoped(args(&["--cluster-credentials"])).await;
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    let listed: Namespace = serde_json::from_value(json!({"metadata": {"name": "listed"}})).unwrap();
    namespaces.create(&PostParams::default(), &listed).await.unwrap();
    env.create_secret("shared-client", &[("client_id", "c"), ("client_secret", "s")]).await;
    let ccc: ClusterClientCredential = serde_json::from_value(json!({
        "apiVersion": "tokensync.io/v1alpha1", "kind": "ClusterClientCredential",
        "metadata": {"name": "shared"},
        "spec": {
            "tokenEndpoint": idp.server.url("/token"),
            "clientAuthentication": "client_secret_post",
            "credentialsRef": {"name": "shared-client", "namespace": env.ns},
            "target": {"name": "shared-token", "namespaces": ["listed"]}
        }
    }))
    .unwrap();
    let cccs: Api<ClusterClientCredential> = Api::all(env.client.clone());
    cccs.create(&PostParams::default(), &ccc).await.unwrap();
    support::real::wait_on(cccs, "shared", "synced its namespace", |c: Option<&ClusterClientCredential>| {
        c.and_then(|c| c.status.as_ref()).is_some_and(|s| s.synced_namespaces == Some(1))
    })
    .await;

    let plugin = Plugin::install();
    let config = plugin.kubeconfig(env.plane.kubeconfig(), &env.ns, "kubeconfig");
    let run = plugin.run(&config, &["status", "clusterclientcredential/shared"]).await;
    println!("$ kubectl tokensync status clusterclientcredential/shared\n{}", run.stdout);
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
