//! The ClientCredential API: the committed CRD is current, the examples are valid, and every
//! admission rule is enforced twice — by the CRD's CEL rules (evaluated here with a CEL
//! interpreter, walking the schema the way the API server does) and by the Rust-side
//! validation the controller and `tokensync fetch` run.

use std::path::Path;
use std::sync::Arc;

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

/// Evaluates every x-kubernetes-validations rule that applies to `object`, descending
/// through properties, items and additionalProperties like the API server. Returns the
/// messages of the rules that did not hold. Panics if a rule does not compile.
fn cel_violations(schema: &Value, object: &Value) -> Vec<String> {
    let mut env = cel::Env::stdlib();
    env.add_extension(cel::extensions::strings).unwrap();
    let env = Arc::new(env);
    let mut out = Vec::new();
    walk(&env, schema, object, &mut out);
    out
}

fn walk(env: &Arc<cel::Env>, schema: &Value, object: &Value, out: &mut Vec<String>) {
    if object.is_null() {
        return;
    }
    if let Some(rules) = schema.get("x-kubernetes-validations").and_then(Value::as_array) {
        for rule in rules {
            let source = rule["rule"].as_str().unwrap();
            let program = env.compile(source).unwrap_or_else(|e| panic!("CEL rule {source:?} does not compile: {e:?}"));
            let mut ctx = cel::Context::with_env(env.clone());
            ctx.add_variable("self", cel::to_value(object).unwrap()).unwrap();
            match program.execute(&ctx) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => out.push(rule["message"].as_str().unwrap_or(source).to_owned()),
                other => panic!("CEL rule {source:?} did not evaluate to a bool on {object}: {other:?}"),
            }
        }
    }
    if let (Some(props), Some(obj)) = (schema.get("properties").and_then(Value::as_object), object.as_object()) {
        for (name, sub) in props {
            if let Some(v) = obj.get(name) {
                walk(env, sub, v, out);
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), object.as_array()) {
        for v in arr {
            walk(env, items, v, out);
        }
    }
    if let (Some(additional), Some(obj)) = (schema.get("additionalProperties"), object.as_object())
        && additional.is_object()
    {
        for v in obj.values() {
            walk(env, additional, v, out);
        }
    }
}

/// The object as the API server would see it after defaulting: the Rust types fill in the
/// same defaults the schema declares.
fn defaulted(cc: &ClientCredential) -> Value {
    serde_json::to_value(cc).unwrap()
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

/// kubectl renders a `date` printer column as an age ("5m"), and a time in the future as
/// `<invalid>`. Every date column of both CRDs is evaluated against a status the controller
/// computes for a healthy credential (token issued in the past, expiring and renewing in the
/// future): each must point at a time that is not in the future.
#[test]
fn no_date_printer_column_points_at_a_future_time() {
    use tokensync::controller::status::{Facts, TokenFacts, next};
    let now: jiff::Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
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
        }),
        failure: None,
        renew_at: Some(minutes(35)),
        failed_attempts: 1,
        last_failure: Some(minutes(-1)),
        retry_after_seconds: None,
        failed_inputs: None,
        handled_renewal_request: None,
        target_secret_name: "demo".into(),
        service_account: None,
    };
    let status = serde_json::to_value(next(None, &facts)).unwrap();
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
        let violations = cel_violations(&schema(), &defaulted(cc));
        assert!(violations.is_empty(), "examples/{name}.yaml breaks CRD rules: {violations:?}");
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
    assert!(cel_violations(&schema(), &defaulted(&cc)).is_empty());
}

/// One case per admission rule: the spec, the field the Rust error must name, and whether
/// a CEL rule (as opposed to a schema keyword such as pattern or enum) must catch it too.
#[test]
fn each_invalid_spec_is_rejected_with_a_message_naming_the_field() {
    let cases: Vec<(&str, Value, &str, bool)> = vec![
        ("neither endpoint nor issuer", with(json!({"tokenEndpoint": null})), "spec.tokenEndpoint", true),
        ("both endpoint and issuer", with(json!({"issuer": "https://auth.example"})), "spec.tokenEndpoint", true),
        (
            "renewBefore with percentage",
            with(json!({"renewBefore": "5m", "renewBeforePercentage": 30})),
            "spec.renewBefore",
            true,
        ),
        (
            "refresh_token grant without key",
            with(json!({"grantType": "refresh_token"})),
            "spec.credentialsRef.refreshTokenKey",
            true,
        ),
        (
            "authorization_code without key",
            with(json!({"grantType": "authorization_code"})),
            "spec.credentialsRef.authorizationCodeKey",
            true,
        ),
        (
            "jwt-bearer without private key",
            with(json!({"grantType": "urn:ietf:params:oauth:grant-type:jwt-bearer"})),
            "spec.credentialsRef.privateKeyKey",
            true,
        ),
        (
            "private_key_jwt without private key",
            with(json!({"clientAuthentication": "private_key_jwt"})),
            "spec.credentialsRef.privateKeyKey",
            true,
        ),
        (
            "client_credentials with auth none",
            with(json!({"clientAuthentication": "none"})),
            "spec.clientAuthentication",
            true,
        ),
        (
            "client_secret_jwt with RS256",
            with(json!({"clientAuthentication": "client_secret_jwt", "assertion": {"algorithm": "RS256"}})),
            "spec.assertion.algorithm",
            true,
        ),
        (
            "HS256 with private_key_jwt",
            with(
                json!({"clientAuthentication": "private_key_jwt", "credentialsRef": {"privateKeyKey": "key.pem"}, "assertion": {"algorithm": "HS256"}}),
            ),
            "spec.assertion.algorithm",
            true,
        ),
        (
            "reserved extra parameter",
            with(json!({"extraParameters": {"client_secret": "x"}})),
            "spec.extraParameters[client_secret]",
            true,
        ),
        (
            "reserved extra header",
            with(json!({"extraHeaders": [{"name": "authorization", "value": "x"}]})),
            "spec.extraHeaders[0].name",
            true,
        ),
        (
            "reserved extra claim",
            with(
                json!({"clientAuthentication": "private_key_jwt", "credentialsRef": {"privateKeyKey": "k"}, "assertion": {"extraClaims": {"exp": "1"}}}),
            ),
            "spec.assertion.extraClaims[exp]",
            true,
        ),
        (
            "target is the credentials Secret",
            with(json!({"target": {"name": "demo-client"}})),
            "spec.target.name",
            true,
        ),
        (
            "dockerconfigjson without template",
            with(json!({"target": {"type": "kubernetes.io/dockerconfigjson"}})),
            "spec.target.template",
            true,
        ),
        ("percentage out of range", with(json!({"renewBeforePercentage": 100})), "spec.renewBeforePercentage", false),
        ("malformed renewBefore", with(json!({"renewBefore": "10 minutes"})), "spec.renewBefore", false),
        (
            "malformed default lifetime",
            with(json!({"response": {"defaultLifetime": "1d"}})),
            "spec.response.defaultLifetime",
            false,
        ),
        ("token endpoint not a URL", with(json!({"tokenEndpoint": "auth.example/token"})), "spec.tokenEndpoint", false),
        (
            "verify URL with credentials",
            with(json!({"verify": {"url": "https://user:pw@api.example/me"}})),
            "spec.verify.url",
            false,
        ),
        ("scope with a space", with(json!({"scopes": ["read write"]})), "spec.scopes[0]", false),
        (
            "header value with a newline",
            with(json!({"extraHeaders": [{"name": "X-A", "value": "a\r\nB: c"}]})),
            "spec.extraHeaders[0].value",
            false,
        ),
        (
            "credentials Secret name invalid",
            with(json!({"credentialsRef": {"name": "Demo_Client"}})),
            "spec.credentialsRef.name",
            false,
        ),
        (
            "template key invalid",
            with(json!({"target": {"template": {"a/b": "{{ access_token }}"}}})),
            "spec.target.template[a/b]",
            false,
        ),
        (
            "a ClientCredential reading a Secret in another namespace",
            with(json!({"credentialsRef": {"namespace": "platform"}})),
            "spec.credentialsRef.namespace",
            true,
        ),
        (
            "no credentials Secret and no ServiceAccount",
            with(json!({"credentialsRef": null, "clientId": "app"})),
            "spec.credentialsRef",
            true,
        ),
        (
            "client secret authentication without a credentials Secret",
            with(
                json!({"credentialsRef": null, "serviceAccountRef": {"name": "app", "audience": "api://AzureADTokenExchange"}, "grantType": "urn:ietf:params:oauth:grant-type:jwt-bearer"}),
            ),
            "spec.credentialsRef",
            true,
        ),
        (
            "service_account_token authentication without a ServiceAccount",
            with(json!({"clientAuthentication": "service_account_token"})),
            "spec.serviceAccountRef",
            true,
        ),
        (
            "service_account_token authentication without a client id",
            with(
                json!({"credentialsRef": null, "clientAuthentication": "service_account_token", "serviceAccountRef": {"name": "app", "audience": "api://AzureADTokenExchange"}}),
            ),
            "spec.clientId",
            true,
        ),
        (
            "token exchange without a subject token",
            with(json!({"grantType": "urn:ietf:params:oauth:grant-type:token-exchange"})),
            "spec.serviceAccountRef",
            true,
        ),
        (
            "a ServiceAccount nothing uses",
            with(json!({"serviceAccountRef": {"name": "app", "audience": "api://AzureADTokenExchange"}})),
            "spec.serviceAccountRef",
            true,
        ),
        (
            "a ClientCredential using a ServiceAccount in another namespace",
            with(
                json!({"clientAuthentication": "service_account_token", "serviceAccountRef": {"name": "app", "namespace": "kube-system", "audience": "api://AzureADTokenExchange"}}),
            ),
            "spec.serviceAccountRef.namespace",
            true,
        ),
        (
            "a ServiceAccount token shorter than the API server allows",
            with(
                json!({"clientAuthentication": "service_account_token", "serviceAccountRef": {"name": "app", "audience": "a", "expirationSeconds": 599}}),
            ),
            "spec.serviceAccountRef.expirationSeconds",
            false,
        ),
        (
            "reserved token exchange parameter",
            with(json!({"extraParameters": {"subject_token": "x"}})),
            "spec.extraParameters[subject_token]",
            true,
        ),
        (
            "a ClientCredential fanning out to other namespaces",
            with(json!({"target": {"namespaceSelector": {"matchLabels": {"team": "a"}}}})),
            "spec.target",
            true,
        ),
    ];
    for (what, object, field, cel_rule) in cases {
        let cc: ClientCredential = serde_json::from_value(object).unwrap_or_else(|e| panic!("{what}: {e}"));
        let errors = validate(&cc.spec, "demo").expect_err(what);
        assert!(errors.mentions(field), "{what}: expected an error about {field}, got: {errors}");
        assert!(errors.to_string().contains(field), "{what}: the message names the field: {errors}");
        let violations = cel_violations(&schema(), &defaulted(&cc));
        assert_eq!(!violations.is_empty(), cel_rule, "{what}: CEL violations {violations:?}");
    }
}

#[test]
fn unknown_enum_values_are_rejected_when_reading() {
    for patch in [
        json!({"grantType": "password"}),
        json!({"clientAuthentication": "tls_client_auth"}),
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
    assert!(cel_violations(&cluster_schema(), &serde_json::to_value(&ok).unwrap()).is_empty());
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
        // The shared rules hold for the cluster kind too.
        ("both endpoint and issuer", cluster(json!({"issuer": "https://auth.example"})), "spec.tokenEndpoint"),
    ];
    for (what, object, field) in cases {
        let ccc: ClusterClientCredential = serde_json::from_value(object).unwrap_or_else(|e| panic!("{what}: {e}"));
        let errors = validate_cluster(&ccc.spec.token, "auth0").expect_err(what);
        assert!(errors.mentions(field), "{what}: expected an error about {field}, got: {errors}");
        let violations = cel_violations(&cluster_schema(), &serde_json::to_value(&ccc).unwrap());
        assert!(!violations.is_empty(), "{what}: the CRD rules catch it too");
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
    assert!(cel_violations(&cluster_schema(), &serde_json::to_value(&ccc).unwrap()).is_empty());
    let secret = documents.iter().find(|d| d["kind"] == "Secret").unwrap();
    let creds = ccc.spec.token.credentials_ref.as_ref().unwrap();
    assert_eq!(secret["metadata"]["namespace"], json!(creds.namespace));
    assert_eq!(secret["metadata"]["name"], json!(creds.name));
}
