//! The ClientCredential API: the committed CRD is current, the examples are valid, and every
//! admission rule is enforced twice — by the real Kubernetes API server with the committed
//! CRDs installed (`kubectl apply --dry-run=server`: schema, defaults and CEL rules, with the
//! message a user sees) and by the Rust-side validation the controller and `tokensync fetch`
//! run.

mod support;

use std::path::Path;

use support::control_plane::ControlPlane;

use serde_json::{Value, json};
use tokensync::api::{self, ClientCredential, validate::validate};
use tokensync::manifest::Manifests;

const EXAMPLES: &[&str] =
    &["chalk", "chatlayer", "cerkl", "charp", "tali", "entra-federated", "google-sts", "keycloak-federated"];

fn example(name: &str) -> Manifests {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(format!("{name}.yaml"));
    Manifests::load_files(&[path]).unwrap()
}

/// The openAPIV3Schema of the served version.
fn schema() -> Value {
    let crd = serde_json::to_value(api::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// What the real API server answers to `kubectl apply --dry-run=server` of `object` (its
/// schema, defaults and CEL rules, with the real evaluator and its cost budget): None when it
/// accepts it, else kubectl's error as a user sees it. Namespaced objects go to a namespace of
/// their own.
fn api_server_rejection(object: &Value) -> Option<String> {
    let mut object = object.clone();
    if object["kind"] == "ClientCredential" {
        object["metadata"]["namespace"] = test_namespace().into();
    }
    kubectl_dry_run(&["-f", "-"], Some(&object))
}

/// `kubectl apply --dry-run=server ARGS` (with `object` as JSON on stdin): None when it
/// succeeds, else its stderr.
fn kubectl_dry_run(args: &[&str], object: Option<&Value>) -> Option<String> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = ControlPlane::shared()
        .kubectl()
        .args(["apply", "--dry-run=server"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    if let Some(object) = object {
        stdin.write_all(object.to_string().as_bytes()).unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A namespace on the shared control plane for this binary's dry runs.
fn test_namespace() -> &'static str {
    static NS: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    NS.get_or_init(|| {
        let out = ControlPlane::shared().kubectl().args(["create", "namespace", "api-tests"]).output().unwrap();
        assert!(out.status.success(), "kubectl create namespace: {}", String::from_utf8_lossy(&out.stderr));
    });
    "api-tests"
}

#[test]
fn committed_crds_match_the_generated_ones() {
    for (file, generated) in api::all_crds() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        let command = generated.lines().nth(1).unwrap_or_default().trim_start_matches("#").trim();
        assert!(committed == generated, "{file} is stale; regenerate it with:\n    {command}");
    }
}

#[test]
fn crd_declares_names_columns_and_status_subresource() {
    let crd = serde_json::to_value(api::crd()).unwrap();
    let spec = &crd["spec"];
    assert_eq!(spec["group"], "tokensync.io");
    assert_eq!(spec["scope"], "Namespaced");
    assert_eq!(spec["names"]["shortNames"], json!(["clientcred"]));
    assert_eq!(spec["names"]["categories"], json!(["tokensync"]));
    let version = &spec["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], json!({}));
    let columns: Vec<&str> =
        version["additionalPrinterColumns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(columns, ["Ready", "Reason", "Expires", "Refreshed", "Age"]);
}

/// The status the controller computes at `now` for a healthy credential: token issued 5
/// minutes ago, renewing in 35 and expiring in 55; with `failed_a_minute_ago`, one failed
/// renewal attempt a minute ago (still healthy: the token is valid).
fn healthy_status(now: jiff::Timestamp, target: &str, failed_a_minute_ago: bool) -> Value {
    use tokensync::controller::status::{Facts, TokenFacts, next};
    let minutes = |m: i64| now + jiff::SignedDuration::from_mins(m);
    let facts = Facts {
        now,
        generation: Some(1),
        suspended: false,
        token: Some(TokenFacts {
            token_type: "Bearer".into(),
            scope: None,
            issued_at: minutes(-5),
            expires_at: minutes(55),
            bound_certificate: None,
        }),
        failure: None,
        renew_at: Some(minutes(35)),
        failed_attempts: u32::from(failed_a_minute_ago),
        last_failure: failed_a_minute_ago.then(|| minutes(-1)),
        retry_after_seconds: None,
        failed_inputs: None,
        handled_renewal_request: None,
        target_secret_name: target.into(),
        service_account: None,
        client_certificate: None,
    };
    serde_json::to_value(next(None, &facts)).unwrap()
}

/// `kubectl get` as a user sees it, from the real kubectl against the real API server: the
/// columns of both kinds, and for a healthy credential (token issued 5 minutes ago, expiring
/// in 55) a READY/REASON pair, the expiry as a time, and ages where kubectl prints ages, never
/// `<invalid>`.
#[test]
fn kubectl_get_prints_the_columns_with_no_invalid_age_for_a_healthy_credential() {
    let plane = ControlPlane::shared();
    let ns = test_namespace();
    let status = healthy_status(jiff::Timestamp::now(), "printed", false);
    let run = |args: &[&str]| {
        let out = plane.kubectl().args(args).output().unwrap();
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let mut cc = base();
    cc["metadata"] = json!({"name": "printed", "namespace": ns});
    let mut ccc = cluster(json!({}));
    ccc["metadata"] = json!({"name": "printed"});
    for (object, kind, namespaced) in [(cc, "clientcred", true), (ccc, "clusterclientcred", false)] {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), object.to_string()).unwrap();
        run(&["apply", "-f", file.path().to_str().unwrap()]);
        let ns_args: &[&str] = if namespaced { &["-n", ns] } else { &[] };
        let patch = json!({"status": status}).to_string();
        run(&[&["patch", kind, "printed", "--subresource=status", "--type=merge", "-p", &patch][..], ns_args].concat());
        let printed = run(&[&["get", kind, "printed"][..], ns_args].concat());
        let lines: Vec<Vec<&str>> = printed.lines().map(|l| l.split_whitespace().collect()).collect();
        let expected_header: &[&str] = if namespaced {
            &["NAME", "READY", "REASON", "EXPIRES", "REFRESHED", "AGE"]
        } else {
            &["NAME", "READY", "REASON", "SYNCED", "FAILED", "EXPIRES", "REFRESHED", "AGE"]
        };
        assert_eq!(lines[0], expected_header, "{printed}");
        let row = &lines[1];
        assert!(!printed.contains("<invalid>"), "{printed}");
        assert_eq!((row[0], row[1], row[2]), ("printed", "True", "TokenIssued"), "{printed}");
        assert_eq!(row[row.len() - 3], status["expiresAt"].as_str().unwrap(), "EXPIRES is the time: {printed}");
        let refreshed = row[row.len() - 2];
        assert!(
            refreshed
                .strip_prefix("5m")
                .is_some_and(|rest| rest.is_empty() || rest.trim_end_matches('s').parse::<u8>().is_ok()),
            "REFRESHED is an age of about 5 minutes: {printed}"
        );
    }
}

/// kubectl renders a `date` printer column as an age ("5m"), and a time in the future as
/// `<invalid>`. Every date column of both CRDs is evaluated against a status the controller
/// computes for a healthy credential (token issued in the past, expiring and renewing in the
/// future): each must point at a time that is not in the future.
#[test]
fn no_date_printer_column_points_at_a_future_time() {
    let now: jiff::Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
    let status = healthy_status(now, "demo", true);
    let object = json!({"metadata": {"creationTimestamp": "2026-11-30T11:00:00Z"}, "status": status});
    for crd in [serde_json::to_value(api::crd()).unwrap(), serde_json::to_value(api::cluster::crd()).unwrap()] {
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_owned();
        let columns = crd["spec"]["versions"][0]["additionalPrinterColumns"].as_array().unwrap().clone();
        let dates: Vec<&Value> = columns.iter().filter(|c| c["type"] == "date").collect();
        assert!(!dates.is_empty(), "{kind}: expected at least the Age column");
        for column in dates {
            let path = column["jsonPath"].as_str().unwrap();
            // Date columns are plain field paths (.a.b.c); a filter expression has no place here.
            assert!(path.starts_with('.') && !path.contains('['), "{kind}: date column {path} is not a field path");
            let value = path[1..].split('.').fold(&object, |v, key| &v[key]);
            let time: jiff::Timestamp = value
                .as_str()
                .unwrap_or_else(|| panic!("{kind}: date column {path} is not set in a healthy status"))
                .parse()
                .unwrap();
            assert!(
                time <= now,
                "{kind}: date column {} shows {path}, a future time: kubectl prints <invalid>",
                column["name"]
            );
        }
    }
    // And the times in the future are still shown, as strings.
    assert_eq!(status["expiresAt"], json!("2026-11-30T12:55:00Z"));
}

#[test]
fn crd_schema_is_structural_without_nullable_and_every_field_is_documented() {
    fn check(path: &str, schema: &Value, undocumented: &mut Vec<String>) {
        assert!(schema.get("nullable").is_none(), "{path} is nullable");
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            assert!(values.iter().all(|v| !v.is_null()), "{path} has null in its enum");
        }
        for keyword in ["anyOf", "oneOf", "allOf", "$ref"] {
            assert!(schema.get(keyword).is_none(), "{path} uses {keyword}, not allowed in a structural schema");
        }
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            assert!(schema.get("type").is_some(), "{path} has properties but no type");
            for (name, sub) in props {
                let sub_path = format!("{path}.{name}");
                if sub.get("description").and_then(Value::as_str).is_none_or(str::is_empty) {
                    undocumented.push(sub_path.clone());
                }
                check(&sub_path, sub, undocumented);
            }
        }
        if let Some(items) = schema.get("items") {
            check(&format!("{path}[]"), items, undocumented);
        }
        if let Some(additional) = schema.get("additionalProperties").filter(|a| a.is_object()) {
            check(&format!("{path}{{}}"), additional, undocumented);
        }
    }
    let mut undocumented = Vec::new();
    check("", &schema()["properties"]["spec"], &mut undocumented);
    check("status", &schema()["properties"]["status"], &mut undocumented);
    assert!(undocumented.is_empty(), "fields without a description (kubectl explain shows nothing): {undocumented:?}");
}

#[test]
fn every_example_is_valid_for_rust_validation_and_for_the_crd_rules() {
    for name in EXAMPLES {
        let manifests = example(name);
        assert_eq!(manifests.client_credentials.len(), 1, "{name}.yaml holds one ClientCredential");
        let cc = &manifests.client_credentials[0];
        let cc_name = cc.metadata.name.as_deref().unwrap();
        validate(&cc.spec, cc_name).unwrap_or_else(|e| panic!("examples/{name}.yaml: {e}"));
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(format!("{name}.yaml"));
        let rejected = kubectl_dry_run(&["-n", test_namespace(), "-f", path.to_str().unwrap()], None);
        assert_eq!(rejected, None, "kubectl apply -f examples/{name}.yaml");
        match &cc.spec.credentials_ref {
            Some(r) => assert!(
                manifests.secret("default", &r.name).is_some(),
                "examples/{name}.yaml holds the Secret its ClientCredential references"
            ),
            // A secretless example: a ServiceAccount that opts in, and no Secret at all.
            None => {
                assert!(cc.spec.service_account_ref.is_some(), "examples/{name}.yaml: no Secret and no ServiceAccount");
                assert!(manifests.secrets.is_empty(), "examples/{name}.yaml needs no Secret");
            }
        }
    }
}

/// A minimal valid ClientCredential to mutate.
fn base() -> Value {
    json!({
        "apiVersion": "tokensync.io/v1alpha1",
        "kind": "ClientCredential",
        "metadata": {"name": "demo", "namespace": "team-a"},
        "spec": {
            "tokenEndpoint": "https://auth.example/token",
            "credentialsRef": {"name": "demo-client"}
        }
    })
}

fn with(patch: Value) -> Value {
    let mut v = base();
    merge(&mut v["spec"], patch);
    v
}

fn merge(target: &mut Value, patch: Value) {
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

#[test]
fn base_spec_is_valid() {
    let cc: ClientCredential = serde_json::from_value(base()).unwrap();
    validate(&cc.spec, "demo").unwrap();
    assert_eq!(api_server_rejection(&base()), None);
}

/// One case per admission rule: the spec and the field the errors must name. Each is refused
/// twice: by the real API server (`kubectl apply`, the CRD's schema keywords and CEL rules,
/// the message a user sees naming the field) and by the Rust validation the controller runs
/// where admission did not (an older CRD) and `tokensync fetch` runs on files.
#[test]
fn each_invalid_spec_is_rejected_with_a_message_naming_the_field() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("neither endpoint nor issuer", with(json!({"tokenEndpoint": null})), "spec.tokenEndpoint"),
        ("both endpoint and issuer", with(json!({"issuer": "https://auth.example"})), "spec.tokenEndpoint"),
        (
            "renewBefore with percentage",
            with(json!({"renewBefore": "5m", "renewBeforePercentage": 30})),
            "spec.renewBefore",
        ),
        (
            "refresh_token grant without key",
            with(json!({"grantType": "refresh_token"})),
            "spec.credentialsRef.refreshTokenKey",
        ),
        (
            "authorization_code without key",
            with(json!({"grantType": "authorization_code"})),
            "spec.credentialsRef.authorizationCodeKey",
        ),
        (
            "jwt-bearer without private key",
            with(json!({"grantType": "urn:ietf:params:oauth:grant-type:jwt-bearer"})),
            "spec.credentialsRef.privateKeyKey",
        ),
        (
            "private_key_jwt without private key",
            with(json!({"clientAuthentication": "private_key_jwt"})),
            "spec.credentialsRef.privateKeyKey",
        ),
        (
            "client_credentials with auth none",
            with(json!({"clientAuthentication": "none"})),
            "spec.clientAuthentication",
        ),
        (
            "client_secret_jwt with RS256",
            with(json!({"clientAuthentication": "client_secret_jwt", "assertion": {"algorithm": "RS256"}})),
            "spec.assertion.algorithm",
        ),
        (
            "HS256 with private_key_jwt",
            with(
                json!({"clientAuthentication": "private_key_jwt", "credentialsRef": {"privateKeyKey": "key.pem"}, "assertion": {"algorithm": "HS256"}}),
            ),
            "spec.assertion.algorithm",
        ),
        (
            "reserved extra parameter",
            with(json!({"extraParameters": {"client_secret": "x"}})),
            "spec.extraParameters[client_secret]",
        ),
        (
            "reserved extra header",
            with(json!({"extraHeaders": [{"name": "authorization", "value": "x"}]})),
            "spec.extraHeaders[0].name",
        ),
        (
            "reserved extra claim",
            with(
                json!({"clientAuthentication": "private_key_jwt", "credentialsRef": {"privateKeyKey": "k"}, "assertion": {"extraClaims": {"exp": "1"}}}),
            ),
            "spec.assertion.extraClaims[exp]",
        ),
        ("target is the credentials Secret", with(json!({"target": {"name": "demo-client"}})), "spec.target.name"),
        (
            "dockerconfigjson without template",
            with(json!({"target": {"type": "kubernetes.io/dockerconfigjson"}})),
            "spec.target.template",
        ),
        ("percentage out of range", with(json!({"renewBeforePercentage": 100})), "spec.renewBeforePercentage"),
        ("malformed renewBefore", with(json!({"renewBefore": "10 minutes"})), "spec.renewBefore"),
        (
            "malformed default lifetime",
            with(json!({"response": {"defaultLifetime": "1d"}})),
            "spec.response.defaultLifetime",
        ),
        ("token endpoint not a URL", with(json!({"tokenEndpoint": "auth.example/token"})), "spec.tokenEndpoint"),
        (
            "verify URL with credentials",
            with(json!({"verify": {"url": "https://user:pw@api.example/me"}})),
            "spec.verify.url",
        ),
        ("scope with a space", with(json!({"scopes": ["read write"]})), "spec.scopes[0]"),
        (
            "header value with a newline",
            with(json!({"extraHeaders": [{"name": "X-A", "value": "a\r\nB: c"}]})),
            "spec.extraHeaders[0].value",
        ),
        (
            "credentials Secret name invalid",
            with(json!({"credentialsRef": {"name": "Demo_Client"}})),
            "spec.credentialsRef.name",
        ),
        (
            "template key invalid",
            with(json!({"target": {"template": {"a/b": "{{ access_token }}"}}})),
            "spec.target.template[a/b]",
        ),
        (
            "a ClientCredential reading a Secret in another namespace",
            with(json!({"credentialsRef": {"namespace": "platform"}})),
            "spec.credentialsRef.namespace",
        ),
        (
            "no credentials Secret and no ServiceAccount",
            with(json!({"credentialsRef": null, "clientId": "app"})),
            "spec.credentialsRef",
        ),
        (
            "client secret authentication without a credentials Secret",
            with(
                json!({"credentialsRef": null, "serviceAccountRef": {"name": "app", "audience": "api://AzureADTokenExchange"}, "grantType": "urn:ietf:params:oauth:grant-type:jwt-bearer"}),
            ),
            "spec.credentialsRef",
        ),
        (
            "service_account_token authentication without a ServiceAccount",
            with(json!({"clientAuthentication": "service_account_token"})),
            "spec.serviceAccountRef",
        ),
        (
            "service_account_token authentication without a client id",
            with(
                json!({"credentialsRef": null, "clientAuthentication": "service_account_token", "serviceAccountRef": {"name": "app", "audience": "api://AzureADTokenExchange"}}),
            ),
            "spec.clientId",
        ),
        (
            "token exchange without a subject token",
            with(json!({"grantType": "urn:ietf:params:oauth:grant-type:token-exchange"})),
            "spec.serviceAccountRef",
        ),
        (
            "a ServiceAccount nothing uses",
            with(json!({"serviceAccountRef": {"name": "app", "audience": "api://AzureADTokenExchange"}})),
            "spec.serviceAccountRef",
        ),
        (
            "a ClientCredential using a ServiceAccount in another namespace",
            with(
                json!({"clientAuthentication": "service_account_token", "serviceAccountRef": {"name": "app", "namespace": "kube-system", "audience": "api://AzureADTokenExchange"}}),
            ),
            "spec.serviceAccountRef.namespace",
        ),
        (
            "a ServiceAccount token shorter than the API server allows",
            with(
                json!({"clientAuthentication": "service_account_token", "serviceAccountRef": {"name": "app", "audience": "a", "expirationSeconds": 599}}),
            ),
            "spec.serviceAccountRef.expirationSeconds",
        ),
        (
            "reserved token exchange parameter",
            with(json!({"extraParameters": {"subject_token": "x"}})),
            "spec.extraParameters[subject_token]",
        ),
        (
            "tls_client_auth without a client certificate",
            with(json!({"clientAuthentication": "tls_client_auth"})),
            "spec.tls.clientCertificateSecretRef",
        ),
        (
            "self_signed_tls_client_auth with neither a credentials Secret nor spec.clientId",
            with(
                json!({"credentialsRef": null, "clientAuthentication": "self_signed_tls_client_auth", "tls": {"clientCertificateSecretRef": {"name": "app-tls"}}}),
            ),
            "spec.credentialsRef",
        ),
        (
            "a certificate Secret name for the target without a client certificate",
            with(json!({"target": {"certificateSecretNameKey": "tls-secret-name"}})),
            "spec.target.certificateSecretNameKey",
        ),
        (
            "a ClientCredential fanning out to other namespaces",
            with(json!({"target": {"namespaceSelector": {"matchLabels": {"team": "a"}}}})),
            "spec.target",
        ),
    ];
    for (what, object, field) in cases {
        let refused = api_server_rejection(&object).unwrap_or_else(|| panic!("{what}: the API server accepted it"));
        // The API server names a map, not the key in it: spec.extraParameters for [client_secret].
        let shown = if field.ends_with(']') { &field[..field.rfind('[').unwrap()] } else { field };
        let names = |f: &str| refused.contains(&format!("{f}: Invalid value"));
        assert!(names(field) || names(shown), "{what}: kubectl does not name {field}: {refused}");
        let cc: ClientCredential = serde_json::from_value(object).unwrap_or_else(|e| panic!("{what}: {e}"));
        let errors = validate(&cc.spec, "demo").expect_err(what);
        assert!(errors.mentions(field), "{what}: expected an error about {field}, got: {errors}");
        assert!(errors.to_string().contains(field), "{what}: the message names the field: {errors}");
    }
}

/// RFC 8705: the certificate of a kubernetes.io/tls Secret is the credential; the client id is
/// inline, and no credentials Secret is needed.
#[test]
fn a_mutual_tls_credential_needs_only_its_certificate_secret() {
    for method in ["tls_client_auth", "self_signed_tls_client_auth"] {
        let object = with(json!({
            "credentialsRef": null,
            "clientId": "payments",
            "clientAuthentication": method,
            "tls": {"clientCertificateSecretRef": {"name": "payments-tls"}},
            "target": {"certificateSecretNameKey": "tls-secret-name"},
        }));
        assert_eq!(api_server_rejection(&object), None, "{method}");
        let cc: ClientCredential = serde_json::from_value(object).unwrap();
        validate(&cc.spec, "demo").unwrap();
        let tls = cc.spec.tls.unwrap().client_certificate_secret_ref.unwrap();
        assert_eq!((tls.certificate_key.as_str(), tls.private_key_key.as_str()), ("tls.crt", "tls.key"));
    }
}

/// examples/mtls-cert-manager.yaml: the ClientCredential passes both validations, and the
/// cert-manager Certificate next to it writes the Secret the credential reads, for client
/// authentication. (cert-manager's CRD is not installed on the test control plane, so only the
/// ClientCredential goes to the API server.)
#[test]
fn the_cert_manager_example_feeds_its_certificate_to_the_credential() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mtls-cert-manager.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let documents: Vec<Value> =
        text.split("\n---\n").map(|d| serde_saphyr::from_str(d).expect("a YAML document")).collect();
    let certificate = documents.iter().find(|d| d["kind"] == "Certificate").expect("a cert-manager Certificate");
    let object = documents.iter().find(|d| d["kind"] == "ClientCredential").expect("a ClientCredential").clone();
    assert_eq!(certificate["apiVersion"], "cert-manager.io/v1");
    assert!(certificate["spec"]["usages"].as_array().unwrap().iter().any(|u| u == "client auth"));

    let cc: ClientCredential = serde_json::from_value(object.clone()).unwrap();
    validate(&cc.spec, "payments-api").unwrap();
    assert_eq!(api_server_rejection(&object), None);
    assert!(cc.spec.client_authentication.is_mutual_tls() && cc.spec.credentials_ref.is_none());
    let reference = cc.spec.tls.unwrap().client_certificate_secret_ref.unwrap();
    assert_eq!(certificate["spec"]["secretName"], reference.name.as_str());
    // What cert-manager writes into a kubernetes.io/tls Secret.
    assert_eq!((reference.certificate_key.as_str(), reference.private_key_key.as_str()), ("tls.crt", "tls.key"));
}

#[test]
fn unknown_enum_values_are_rejected_when_reading() {
    for patch in [
        json!({"grantType": "password"}),
        json!({"clientAuthentication": "attest_jwt_client_auth"}),
        json!({"requestEncoding": "xml"}),
        json!({"target": {"deletionPolicy": "Orphan"}}),
    ] {
        assert!(serde_json::from_value::<ClientCredential>(with(patch.clone())).is_err(), "{patch}");
    }
}

/// The ClusterClientCredential's spec schema, from its own CRD.
fn cluster_schema() -> Value {
    let crd = serde_json::to_value(api::cluster::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn cluster(patch: Value) -> Value {
    let mut v = json!({
        "apiVersion": "tokensync.io/v1alpha1",
        "kind": "ClusterClientCredential",
        "metadata": {"name": "auth0"},
        "spec": {
            "tokenEndpoint": "https://auth.example/token",
            "credentialsRef": {"name": "auth0-client", "namespace": "platform"},
            "target": {"namespaceSelector": {"matchLabels": {"auth0": "yes"}}}
        }
    });
    merge(&mut v["spec"], patch);
    v
}

#[test]
fn a_cluster_credential_needs_its_credentials_namespace_and_a_namespace_selection() {
    use tokensync::api::ClusterClientCredential;
    use tokensync::api::validate::validate_cluster;
    let ok: ClusterClientCredential = serde_json::from_value(cluster(json!({}))).unwrap();
    validate_cluster(&ok.spec.token, "auth0").unwrap();
    assert_eq!(api_server_rejection(&cluster(json!({}))), None);
    let cases = [
        (
            "no credentials namespace",
            cluster(json!({"credentialsRef": {"namespace": null}})),
            "spec.credentialsRef.namespace",
        ),
        ("no namespaces selected", cluster(json!({"target": {"namespaceSelector": null}})), "spec.target"),
        (
            "no ServiceAccount namespace",
            cluster(
                json!({"credentialsRef": null, "clientId": "app", "clientAuthentication": "service_account_token", "serviceAccountRef": {"name": "app", "audience": "api://AzureADTokenExchange"}}),
            ),
            "spec.serviceAccountRef.namespace",
        ),
        (
            "mutual TLS without the credentials namespace to read the certificate from",
            cluster(
                json!({"credentialsRef": null, "clientId": "app", "clientAuthentication": "tls_client_auth", "tls": {"clientCertificateSecretRef": {"name": "app-tls"}}}),
            ),
            "spec.credentialsRef",
        ),
        (
            "the certificate Secret name in copies in other namespaces",
            cluster(
                json!({"clientAuthentication": "tls_client_auth", "tls": {"clientCertificateSecretRef": {"name": "app-tls"}}, "target": {"certificateSecretNameKey": "tls-secret-name"}}),
            ),
            "spec.target.certificateSecretNameKey",
        ),
        // The shared rules hold for the cluster kind too.
        ("both endpoint and issuer", cluster(json!({"issuer": "https://auth.example"})), "spec.tokenEndpoint"),
    ];
    for (what, object, field) in cases {
        let rejection = api_server_rejection(&object);
        let ccc: ClusterClientCredential = serde_json::from_value(object).unwrap_or_else(|e| panic!("{what}: {e}"));
        let errors = validate_cluster(&ccc.spec.token, "auth0").expect_err(what);
        assert!(errors.mentions(field), "{what}: expected an error about {field}, got: {errors}");
        let refused = rejection.unwrap_or_else(|| panic!("{what}: the API server accepted it"));
        assert!(
            refused.contains(&format!("{field}: Invalid value")),
            "{what}: kubectl does not name {field}: {refused}"
        );
    }
}

#[test]
fn the_cluster_crd_is_cluster_scoped_documented_and_shows_the_namespace_counts() {
    let crd = serde_json::to_value(api::cluster::crd()).unwrap();
    assert_eq!(crd["spec"]["scope"], "Cluster");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["clusterclientcred"]));
    assert_eq!(crd["spec"]["names"]["categories"], json!(["tokensync"]));
    let columns: Vec<&str> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Ready", "Reason", "Synced", "Failed", "Expires", "Refreshed", "Age"]);
    fn undocumented(path: &str, schema: &Value, out: &mut Vec<String>) {
        for (name, sub) in schema.get("properties").and_then(Value::as_object).into_iter().flatten() {
            let sub_path = format!("{path}.{name}");
            if sub.get("description").and_then(Value::as_str).is_none_or(str::is_empty) {
                out.push(sub_path.clone());
            }
            undocumented(&sub_path, sub, out);
        }
        if let Some(items) = schema.get("items") {
            undocumented(&format!("{path}[]"), items, out);
        }
    }
    let mut missing = Vec::new();
    undocumented("spec", &cluster_schema()["properties"]["spec"], &mut missing);
    undocumented("status", &cluster_schema()["properties"]["status"], &mut missing);
    assert!(missing.is_empty(), "fields without a description: {missing:?}");
}

#[test]
fn the_cluster_example_is_valid_for_rust_validation_and_for_the_crd_rules() {
    use tokensync::api::ClusterClientCredential;
    use tokensync::api::validate::validate_cluster;
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster-chalk.yaml")).unwrap();
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let ccc: ClusterClientCredential =
        serde_json::from_value(documents.iter().find(|d| d["kind"] == "ClusterClientCredential").unwrap().clone())
            .unwrap();
    validate_cluster(&ccc.spec.token, "chalk").unwrap();
    // The platform team's namespace exists before its Secret is put there.
    let plane = ControlPlane::shared();
    let out = plane.kubectl().args(["create", "namespace", "platform"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rejected = kubectl_dry_run(&["-f", "examples/cluster-chalk.yaml"], None);
    assert_eq!(rejected, None, "kubectl apply -f examples/cluster-chalk.yaml");
    let secret = documents.iter().find(|d| d["kind"] == "Secret").unwrap();
    let creds = ccc.spec.token.credentials_ref.as_ref().unwrap();
    assert_eq!(secret["metadata"]["namespace"], json!(creds.namespace));
    assert_eq!(secret["metadata"]["name"], json!(creds.name));
}
