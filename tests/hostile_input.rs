//! Hostile input: whatever a token server, a manifest, a template or a ClientCredential
//! author sends, tokensync answers with an error, never a panic, a stack overflow or a leaked
//! secret.

mod support;
mod token_server;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use proptest::prelude::*;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use support::controller::*;
use token_server::{Recorded, Reply, TokenServer};
use tokensync::api::{ClientCredential, ClientCredentialSpec};
use tokensync::oauth::config::ResponseMapping;
use tokensync::oauth::error::Redactor;
use tokensync::oauth::transport::HttpResponse;
use tokensync::oauth::{
    Credentials, Endpoint, EndpointPolicy, ErrorKind, TokenClient, TokenRequestConfig, TransportSettings,
};
use tokensync::render::TokenView;

fn now() -> jiff::Timestamp {
    "2026-11-22T10:00:00Z".parse().unwrap()
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        prop_oneof![
            Just("3600"),
            Just("-1"),
            Just("1e309"),
            Just("NaN"),
            Just("2026-11-22T10:00:00Z"),
            Just("eyJhbGciOiJub25lIn0.eyJleHAiOjF9.")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("access_token".to_owned()),
                    Just("expires_in".to_owned()),
                    Just("expires_at".to_owned()),
                    Just("token_type".to_owned()),
                    Just("error".to_owned()),
                    Just("refresh_token".to_owned()),
                    Just("scope".to_owned()),
                    "[a-zA-Z_.]{1,12}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        arb_json().prop_map(|v| v.to_string().into_bytes()),
        ".{0,200}".prop_map(String::into_bytes),
    ]
}

fn arb_mapping() -> impl Strategy<Value = ResponseMapping> {
    let path = prop_oneof![Just("access_token".to_owned()), "[a-z_.]{0,16}", Just("a..b.".to_owned())];
    (path.clone(), path.clone(), path.clone(), path, proptest::option::of(0u64..u64::MAX)).prop_map(
        |(access_token, expires_in, expires_at, token_type, lifetime)| ResponseMapping {
            access_token,
            token_type,
            expires_in,
            expires_at,
            default_lifetime: lifetime.map(Duration::from_secs),
            ..Default::default()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn token_response_parsing_never_panics(
        status in prop_oneof![Just(200u16), Just(400), Just(429), Just(503), 100u16..600],
        body in arb_body(),
        retry_after in proptest::option::of(".{0,40}"),
        mapping in arb_mapping(),
    ) {
        let mut headers = HeaderMap::new();
        if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(reqwest::header::RETRY_AFTER, v);
        }
        let response = HttpResponse { status, headers, body };
        let _ = tokensync::oauth::response::parse(&response, &mapping, now(), &Redactor::default());
    }

    #[test]
    fn manifest_parsing_never_panics(text in prop_oneof![
        ".{0,400}",
        arb_json().prop_map(|v| format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: x}}\ndata: {v}\nstringData: {v}\n")),
        arb_json().prop_map(|v| format!("apiVersion: tokensync.io/v1alpha1\nkind: ClientCredential\nmetadata: {{name: x}}\nspec: {v}\n---\n{v}")),
    ]) {
        let _ = tokensync::manifest::Manifests::parse(&text, "fuzz");
    }

    #[test]
    fn template_rendering_never_panics(
        templates in prop::collection::btree_map("[a-zA-Z_.-]{0,12}", prop_oneof![
            ".{0,60}",
            "\\{\\{ ?[a-z_]{0,14} ?(\\| ?[a-z]{0,10})? ?\\}\\}",
            "\\{% ?(for|if|set|macro|raw|include) .{0,20}%\\}.{0,10}",
            Just("{{ access_token * 99999999 }}".to_owned()),
            Just("{% for i in range(100000000) %}{{ i }}{% endfor %}".to_owned()),
        ], 0..4),
        token in ".{0,80}",
        token_type in ".{0,10}",
        scope in proptest::option::of(".{0,20}"),
    ) {
        let view = TokenView { access_token: &token, token_type: &token_type, expires_at: now(), issued_at: now(), scope: scope.as_deref() };
        let _ = tokensync::render::validate_templates(&templates);
        let _ = tokensync::render::render(Some(&templates), &view);
    }

    #[test]
    fn spec_validation_never_panics(
        replacements in prop::collection::vec((prop_oneof![
            Just("tokenEndpoint"), Just("issuer"), Just("grantType"), Just("clientAuthentication"),
            Just("requestEncoding"), Just("credentialsRef"), Just("scopes"), Just("audience"), Just("resource"),
            Just("extraParameters"), Just("extraHeaders"), Just("refreshEndpoint"), Just("response"), Just("tls"),
            Just("renewBefore"), Just("renewBeforePercentage"), Just("verify"), Just("suspend"), Just("target"),
            Just("allowHttp"),
        ], arb_json()), 0..6),
        name in ".{0,70}",
    ) {
        let mut spec = json!({"tokenEndpoint": "https://auth.example/token", "credentialsRef": {"name": "c"}});
        for (key, value) in replacements {
            spec[key] = value;
        }
        if let Ok(spec) = serde_json::from_value::<ClientCredentialSpec>(spec) {
            let _ = tokensync::api::validate::validate(&spec, &name);
            let _ = tokensync::api::engine::token_request_config(&spec);
        }
    }
}

// ---------------------------------------------------------------------------------------
// ClientCredential-shaped objects: a valid skeleton (apiVersion, kind, metadata, spec) with
// arbitrary values in every spec field, of the right JSON type so that most of them
// deserialize and reach validation; now and then one field holds any JSON at all.
// ---------------------------------------------------------------------------------------

/// Every field of ClientCredentialSpec, as the API spells it.
const SPEC_FIELDS: &[&str] = &[
    "tokenEndpoint",
    "issuer",
    "grantType",
    "clientAuthentication",
    "requestEncoding",
    "omitGrantType",
    "clientId",
    "credentialsRef",
    "serviceAccountRef",
    "tokenExchange",
    "scopes",
    "audience",
    "resource",
    "extraParameters",
    "extraHeaders",
    "refreshEndpoint",
    "response",
    "assertion",
    "tls",
    "renewBefore",
    "renewBeforePercentage",
    "verify",
    "suspend",
    "target",
];

/// A field of an object: its name and, when present, its value.
type Field = BoxedStrategy<(&'static str, Option<Value>)>;

/// Any text at all, or one that looks like what the field expects.
fn text_or(plausible: impl Strategy<Value = String> + 'static) -> BoxedStrategy<Value> {
    prop_oneof![2 => plausible, 1 => ".{0,40}"].prop_map(Value::from).boxed()
}

fn any_text() -> BoxedStrategy<Value> {
    ".{0,40}".prop_map(Value::from).boxed()
}

fn url_value() -> BoxedStrategy<Value> {
    text_or(prop_oneof![
        Just("https://auth.example/token".to_owned()),
        Just("http://169.254.169.254/latest/api/token".to_owned()),
        Just("https://user@auth.example/token".to_owned()),
        "https?://[a-z0-9.-]{0,20}(:[0-9]{1,6})?(/[ -~]{0,30})?",
    ])
}

fn object_name() -> BoxedStrategy<Value> {
    text_or("[a-z0-9]([-a-z0-9.]{0,30}[a-z0-9])?")
}

fn secret_key() -> BoxedStrategy<Value> {
    text_or("[-._a-zA-Z0-9]{1,20}")
}

fn duration_value() -> BoxedStrategy<Value> {
    text_or("([0-9]{1,4}(\\.[0-9]{1,3})?(ms|s|m|h)){1,3}")
}

fn one_of(names: &'static [&'static str]) -> BoxedStrategy<Value> {
    prop::sample::select(names).prop_map(Value::from).boxed()
}

fn integer() -> BoxedStrategy<Value> {
    prop_oneof![any::<i32>().prop_map(i64::from), any::<i64>(), -10i64..100_000].prop_map(Value::from).boxed()
}

fn boolean() -> BoxedStrategy<Value> {
    any::<bool>().prop_map(Value::from).boxed()
}

fn list(item: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop::collection::vec(item, 0..5).prop_map(Value::Array).boxed()
}

fn map(key: BoxedStrategy<Value>, value: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop::collection::vec((key, value), 0..5)
        .prop_map(|entries| {
            let entries = entries.into_iter().map(|(k, v)| (k.as_str().unwrap_or_default().to_owned(), v));
            Value::Object(entries.collect())
        })
        .boxed()
}

fn optional(name: &'static str, value: BoxedStrategy<Value>) -> Field {
    proptest::option::of(value).prop_map(move |v| (name, v)).boxed()
}

fn required(name: &'static str, value: BoxedStrategy<Value>) -> Field {
    value.prop_map(move |v| (name, Some(v))).boxed()
}

fn object(fields: Vec<Field>) -> BoxedStrategy<Value> {
    fields
        .prop_map(|fields| Value::Object(fields.into_iter().filter_map(|(k, v)| Some((k.to_owned(), v?))).collect()))
        .boxed()
}

fn arb_spec() -> BoxedStrategy<Value> {
    let reserved_parameters = prop::sample::select(tokensync::api::validate::RESERVED_PARAMETERS).prop_map(Value::from);
    let reserved_claims = prop::sample::select(tokensync::api::validate::RESERVED_CLAIMS).prop_map(Value::from);
    let header_name = prop_oneof![
        2 => "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}".prop_map(Value::from),
        1 => one_of(&["Authorization", "content-type", "Host", "Accept-Language"]),
        1 => any_text(),
    ];
    let header_value = prop_oneof![any_text(), "[ -~]{0,40}\r\n[ -~]{0,10}".prop_map(Value::from)];
    let scope = text_or("[\\x21\\x23-\\x5B\\x5D-\\x7E]{1,20}");
    let audience = text_or(prop_oneof![
        Just("api://AzureADTokenExchange".to_owned()),
        Just("https://kubernetes.default.svc".to_owned()),
        "[ -~]{1,40}",
    ]);
    let selector = object(vec![
        optional("matchLabels", map(secret_key(), any_text())),
        optional(
            "matchExpressions",
            list(object(vec![
                required("key", secret_key()),
                required("operator", text_or(prop_oneof![Just("In".to_owned()), Just("Exists".to_owned())])),
                optional("values", list(any_text())),
            ])),
        ),
    ]);
    object(vec![
        optional("tokenEndpoint", url_value()),
        optional("issuer", url_value()),
        optional(
            "grantType",
            one_of(&[
                "client_credentials",
                "refresh_token",
                "authorization_code",
                "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ]),
        ),
        optional(
            "clientAuthentication",
            one_of(&[
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
                "client_secret_jwt",
                "none",
                "service_account_token",
                "tls_client_auth",
                "self_signed_tls_client_auth",
            ]),
        ),
        optional("requestEncoding", one_of(&["form", "json"])),
        optional("omitGrantType", boolean()),
        optional("clientId", text_or("[a-z0-9-]{0,12}")),
        optional(
            "credentialsRef",
            object(vec![
                required("name", object_name()),
                optional("namespace", object_name()),
                optional("clientIdKey", secret_key()),
                optional("clientSecretKey", secret_key()),
                optional("privateKeyKey", secret_key()),
                optional("refreshTokenKey", secret_key()),
                optional("authorizationCodeKey", secret_key()),
                optional("subjectTokenKey", secret_key()),
            ]),
        ),
        optional(
            "serviceAccountRef",
            object(vec![
                required("name", object_name()),
                optional("namespace", object_name()),
                required("audience", audience.clone()),
                optional("expirationSeconds", integer()),
            ]),
        ),
        optional(
            "tokenExchange",
            object(vec![
                optional("subjectTokenType", text_or(Just("urn:ietf:params:oauth:token-type:jwt".to_owned()))),
                optional("requestedTokenType", any_text()),
            ]),
        ),
        optional("scopes", list(scope)),
        optional("audience", audience),
        optional("resource", any_text()),
        optional("extraParameters", map(prop_oneof![reserved_parameters, any_text()].boxed(), any_text())),
        optional(
            "extraHeaders",
            list(object(vec![required("name", header_name.boxed()), required("value", header_value.boxed())])),
        ),
        optional(
            "refreshEndpoint",
            object(vec![
                required("url", url_value()),
                optional("requestEncoding", one_of(&["form", "json"])),
                optional("refreshTokenOnly", boolean()),
            ]),
        ),
        optional(
            "response",
            object(vec![
                optional("accessTokenField", text_or("[a-z_.]{0,16}")),
                optional("tokenTypeField", text_or("[a-z_.]{0,16}")),
                optional("expiresInField", text_or("[a-z_.]{0,16}")),
                optional("expiresAtField", text_or("[a-z_.]{0,16}")),
                optional("refreshTokenField", text_or("[a-z_.]{0,16}")),
                optional("defaultLifetime", duration_value()),
            ]),
        ),
        optional(
            "assertion",
            object(vec![
                optional(
                    "algorithm",
                    one_of(&[
                        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "HS256", "HS384",
                        "HS512",
                    ]),
                ),
                optional("keyId", any_text()),
                optional("audience", url_value()),
                optional("issuer", any_text()),
                optional("subject", any_text()),
                optional("lifetime", duration_value()),
                optional("extraClaims", map(prop_oneof![reserved_claims, any_text()].boxed(), any_text())),
            ]),
        ),
        optional(
            "tls",
            object(vec![
                optional(
                    "caBundleSecretRef",
                    object(vec![required("name", object_name()), optional("key", secret_key())]),
                ),
                optional(
                    "clientCertificateSecretRef",
                    object(vec![
                        required("name", object_name()),
                        optional("certificateKey", secret_key()),
                        optional("privateKeyKey", secret_key()),
                    ]),
                ),
            ]),
        ),
        optional("renewBefore", duration_value()),
        optional(
            "renewBeforePercentage",
            prop_oneof![-5i64..120, any::<i32>().prop_map(i64::from)].prop_map(Value::from).boxed(),
        ),
        optional("verify", object(vec![required("url", url_value())])),
        optional("suspend", boolean()),
        optional(
            "target",
            object(vec![
                optional("name", object_name()),
                optional("type", text_or(Just("kubernetes.io/dockerconfigjson".to_owned()))),
                optional("labels", map(secret_key(), any_text())),
                optional("annotations", map(secret_key(), any_text())),
                optional(
                    "template",
                    map(prop_oneof![secret_key(), Just(Value::from(".dockerconfigjson"))].boxed(), any_text()),
                ),
                optional("deletionPolicy", one_of(&["Delete", "Retain"])),
                optional("certificateSecretNameKey", secret_key()),
                optional("namespaces", list(object_name())),
                optional("namespaceSelector", selector),
                optional("excludeNamespaces", list(object_name())),
            ]),
        ),
    ])
}

/// A ClientCredential-shaped document. Its spec is either arbitrary in every field, or a valid
/// one with up to three fields arbitrary (most specs of the first kind break some rule, so the
/// second kind is what reaches the end of validation). In about one case in eight one spec
/// field, or the whole spec, is then replaced by arbitrary JSON of any type.
fn arb_client_credential() -> impl Strategy<Value = Value> {
    let few_fields = prop::collection::vec(prop::sample::select(SPEC_FIELDS), 0..=3);
    let spec = prop_oneof![
        arb_spec(),
        (arb_spec(), few_fields).prop_map(|(arbitrary, fields)| {
            let mut spec =
                json!({"tokenEndpoint": "https://auth.example/token", "credentialsRef": {"name": "demo-client"}});
            for field in fields {
                if let Some(value) = arbitrary.get(field) {
                    spec[field] = value.clone();
                }
            }
            spec
        }),
    ];
    let wild = proptest::option::weighted(0.125, (prop::sample::select(SPEC_FIELDS), any::<bool>(), arb_json()));
    (object_name(), spec, wild).prop_map(|(name, mut spec, wild)| {
        match wild {
            Some((_, true, value)) => spec = value,
            Some((field, _, value)) => spec[field] = value,
            None => {}
        }
        json!({
            "apiVersion": "tokensync.io/v1alpha1",
            "kind": "ClientCredential",
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": spec,
        })
    })
}

/// Fed ClientCredential-shaped objects, validation never panics, and the generator reaches
/// it: most objects deserialize, with a value in every spec field the CRD has, and some of
/// them pass validation while others are refused.
#[test]
fn arbitrary_json_as_a_client_credential_never_panics_validation() {
    use std::cell::{Cell, RefCell};
    const CASES: u32 = 1024;
    let (reached, valid) = (Cell::new(0u32), Cell::new(0u32));
    let fields_reached = RefCell::new(std::collections::BTreeSet::<String>::new());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&arb_client_credential(), |doc| {
            let fields: Vec<String> = doc["spec"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
            if let Ok(cc) = serde_json::from_value::<ClientCredential>(doc) {
                reached.set(reached.get() + 1);
                fields_reached.borrow_mut().extend(fields);
                let name = cc.metadata.name.as_deref().unwrap_or_default();
                if tokensync::api::validate::validate(&cc.spec, name).is_ok() {
                    valid.set(valid.get() + 1);
                }
                let _ = tokensync::api::validate::validate_cluster(&cc.spec, name);
            }
            Ok(())
        })
        .unwrap();
    let (reached, valid) = (reached.get(), valid.get());
    assert!(reached >= CASES * 3 / 4, "only {reached} of {CASES} generated objects reached validate");
    assert!(valid > 0 && valid < reached, "{valid} of the {reached} validated objects passed: both outcomes occur");
    let crd = serde_json::to_value(tokensync::api::crd()).unwrap();
    let spec_fields = crd.pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties").unwrap();
    let spec_fields: std::collections::BTreeSet<String> = spec_fields.as_object().unwrap().keys().cloned().collect();
    let fields_reached = fields_reached.into_inner();
    let missing: Vec<&String> = spec_fields.difference(&fields_reached).collect();
    assert!(missing.is_empty(), "spec fields that never reached validate with a value: {missing:?}");
}

fn nested(levels: usize) -> String {
    format!("{}{}", "[".repeat(levels), "]".repeat(levels))
}

#[test]
fn deeply_nested_json_and_yaml_are_refused_without_overflowing_the_stack() {
    let body = format!("{{\"access_token\": {}}}", nested(100_000));
    for status in [200, 400, 503] {
        let response = HttpResponse { status, headers: HeaderMap::new(), body: body.clone().into_bytes() };
        let e = tokensync::oauth::response::parse(&response, &ResponseMapping::default(), now(), &Redactor::default())
            .unwrap_err();
        assert!(!e.message.is_empty());
    }
    let yaml = format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: x}}\ndata: {}\n", nested(100_000));
    assert!(tokensync::manifest::Manifests::parse(&yaml, "deep.yaml").is_err());
    // Block style: 100 000 sequences, each the only entry of the one before ("- - - … x"), and
    // 1 000 mappings nested by indentation. Refused for their depth, not for their syntax.
    let sequences = format!("{}x\n", "- ".repeat(100_000));
    let mappings: String = (0..1_000).map(|i| format!("{}a:\n", " ".repeat(i))).collect();
    for (what, yaml) in [("sequences", sequences), ("mappings", mappings)] {
        let e = tokensync::manifest::Manifests::parse(&yaml, "deep-block.yaml").unwrap_err().to_string();
        assert!(e.contains("depth"), "nested block {what}: {e}");
    }
    assert!(serde_json::from_str::<ClientCredential>(&nested(100_000)).is_err());
}

#[tokio::test]
async fn huge_and_deeply_nested_token_responses_are_refused_cleanly_by_the_engine() {
    let huge = format!("{{\"access_token\": \"{}\", \"expires_in\": 60}}", "a".repeat(5 * 1024 * 1024));
    let deep = format!("{{\"access_token\": \"t\", \"expires_in\": 60, \"x\": {}}}", nested(100_000));
    let server = TokenServer::start(move |r: &Recorded| match r.path.as_str() {
        "/huge" => Reply::text(200, "application/json", &huge),
        "/huge-error" => Reply::text(500, "text/html", &huge),
        _ => Reply::text(200, "application/json", &deep),
    })
    .await;
    let engine =
        TokenClient::new(EndpointPolicy { allow_http: true, ..Default::default() }, TransportSettings::default());
    let creds = Credentials { client_id: "c".into(), client_secret: Some("s".to_owned().into()), ..Default::default() };
    for path in ["/huge", "/huge-error", "/deep"] {
        let config = TokenRequestConfig::new(Endpoint::Token(server.url(path).parse().unwrap()));
        let e = engine.acquire(&config, &creds, None).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidResponse, "{path}: {e}");
        assert!(e.to_string().len() < 2048, "{path}: the message is bounded");
        if path.starts_with("/huge") {
            assert!(e.to_string().contains("more than 1048576 bytes"), "{e}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// A secret planted in every failure path never reaches logs, Events or status.
// ---------------------------------------------------------------------------------------

/// Planted secrets with characters every encoder rewrites (a space, `+/=&%~>?`), so that each
/// encoding of them ([`encodings`]) is a different needle.
const PLANTED: &str = "PLANTED s3cret+/=&%Zq8~>?";
const PLANTED_REFRESH: &str = "PLANTED refresh&=+/%Wx42~>?";

/// Percent-encodes every byte but those `keep` keeps, with upper-case hex as encoders write it.
fn percent_encoded(text: &str, keep: impl Fn(u8) -> bool) -> String {
    text.bytes().map(|b| if keep(b) { char::from(b).to_string() } else { format!("%{b:02X}") }).collect()
}

/// `secret` as encoders write it: raw; application/x-www-form-urlencoded as
/// `url::form_urlencoded` writes it (space as `+`); percent-encoded as a URL query component
/// (RFC 3986 unreserved characters kept, space as `%20`) and as a path segment (sub-delims,
/// `:` and `@` kept too); base64, standard and URL-safe, unpadded so that a padded copy
/// matches as well.
fn encodings(secret: &str) -> Vec<String> {
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    let mut forms = vec![
        secret.to_owned(),
        form_urlencoded(secret),
        percent_encoded(secret, unreserved),
        percent_encoded(secret, |b| unreserved(b) || b"!$&'()*+,;=:@".contains(&b)),
    ];
    forms.extend(base64_forms(secret));
    forms
}

fn form_urlencoded(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn base64_forms(text: &str) -> [String; 2] {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    [STANDARD_NO_PAD.encode(text), URL_SAFE_NO_PAD.encode(text)]
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every way a server can echo what it was sent.
fn echo(r: &Recorded) -> Reply {
    let sent = String::from_utf8_lossy(&r.body).into_owned();
    let auth = r.header("authorization").unwrap_or_default().to_owned();
    let p = r.params();
    let secret = p.get("client_secret").or(p.get("refresh_token")).cloned().unwrap_or_default();
    match r.path.trim_start_matches('/') {
        "oauth-error" => {
            Reply::oauth_error(400, "invalid_client", &format!("client secret {secret} is wrong ({sent})"))
        }
        "html" => Reply::text(500, "text/html", &format!("<pre>{sent} {auth}</pre>")),
        "text-200" => Reply::text(200, "text/plain", &format!("you sent {sent}")),
        "error-in-200" => Reply::json(200, json!({"error": "server_error", "error_description": sent})),
        "bad-expiry" => Reply::json(200, json!({"access_token": "ok", "expires_in": secret})),
        "bad-type" => {
            Reply::json(200, json!({"access_token": "ok", "token_type": format!("{secret}\n"), "expires_in": 60}))
        }
        "not-object" => Reply::json(200, json!([secret, sent])),
        "429" => Reply::text(429, "text/plain", &sent).header("retry-after", &secret),
        "unauthorized" => Reply::text(401, "text/plain", &format!("{auth} {sent}")).header("www-authenticate", &secret),
        "refresh" => Reply::oauth_error(400, "invalid_grant", &format!("refresh token {secret} unknown")),
        _ => Reply::text(404, "text/plain", &sent),
    }
}

#[tokio::test]
async fn a_planted_secret_never_reaches_logs_events_or_status_on_any_failure_path() {
    let logs = Captured::default();
    let _ = tracing_log::LogTracer::init();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let api = api_server().await;
    let server = TokenServer::start(echo).await;
    let _c = start(&api, args(&["--backoff-min", "1s", "--backoff-max", "2s"]));
    let paths = [
        "oauth-error",
        "html",
        "text-200",
        "error-in-200",
        "bad-expiry",
        "bad-type",
        "not-object",
        "429",
        "unauthorized",
    ];
    for (i, path) in paths.iter().enumerate() {
        let name = format!("cc-{i}");
        let auth = if i % 2 == 0 { "client_secret_post" } else { "client_secret_basic" };
        create_secret(
            &api,
            source_secret(&format!("{name}-client"), &[("client_id", "cid"), ("client_secret", PLANTED)]),
        )
        .await;
        Cc::new(&name, &server.url(&format!("/{path}"))).spec(json!({"clientAuthentication": auth})).create(&api).await;
    }
    // A refresh token refused with an echo, and a source Secret missing the refresh key.
    create_secret(
        &api,
        source_secret(
            "refresh-client",
            &[("client_id", "cid"), ("client_secret", PLANTED), ("refresh_token", PLANTED_REFRESH)],
        ),
    )
    .await;
    Cc::new("refresh", &server.url("/refresh"))
        .spec(json!({"grantType": "refresh_token", "credentialsRef": {"refreshTokenKey": "refresh_token"}}))
        .create(&api)
        .await;
    create_secret(&api, source_secret("missing-client", &[("client_id", PLANTED), ("other", PLANTED)])).await;
    Cc::new("missing", &server.url("/x")).create(&api).await;

    let names: Vec<String> =
        (0..paths.len()).map(|i| format!("cc-{i}")).chain(["refresh".to_owned(), "missing".to_owned()]).collect();
    // Wait until every credential has failed twice (so retries ran too) or is not Ready.
    api.wait_for(
        |v| {
            names.iter().all(|n| {
                let s = v.get::<ClientCredential>(Some(NS), n).and_then(|c| c.status);
                s.is_some_and(|s| {
                    s.failed_attempts.unwrap_or(0) >= 2
                        || (n == "missing" && s.conditions.iter().any(|c| c.reason == "SourceSecretInvalid"))
                        || s.failed_attempts.unwrap_or(0) >= 1 && s.retry_after_seconds.is_some()
                })
            })
        },
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|_| panic!("not all failed: {:#?}", names.iter().map(|n| status(&api, n)).collect::<Vec<_>>()));
    // Events are written asynchronously after the status; wait for one per failing path.
    api.wait_for(
        |v| v.list_json("events.events.k8s.io", Some(NS)).len() + v.list_json("events", Some(NS)).len() >= paths.len(),
        Duration::from_secs(10),
    )
    .await
    .expect("failure events");

    let statuses: Vec<Value> = api.list_json("clientcredentials.tokensync.io", Some(NS));
    let events = [api.list_json("events.events.k8s.io", Some(NS)), api.list_json("events", Some(NS))].concat();
    let secrets_written: Vec<Value> = api
        .list_json("secrets", Some(NS))
        .into_iter()
        .filter(|s| !s["metadata"]["name"].as_str().unwrap_or_default().ends_with("-client"))
        .collect();
    let log_text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(log_text.contains("reconcile") || log_text.len() > 1000, "logs were captured");
    let planted = encodings(PLANTED);
    let distinct: std::collections::BTreeSet<&String> = planted.iter().collect();
    assert_eq!(distinct.len(), planted.len(), "every encoding of the planted secret differs: {planted:?}");
    // HTTP Basic sends base64 of `id:secret`, each form-urlencoded first (RFC 6749 2.3.1).
    let basic = [base64_forms(&format!("cid:{}", form_urlencoded(PLANTED))), base64_forms(&format!("cid:{PLANTED}"))];
    let needles = [planted, encodings(PLANTED_REFRESH), basic.concat()].concat();
    for (what, text) in [
        ("status", serde_json::to_string(&statuses).unwrap()),
        ("events", serde_json::to_string(&events).unwrap()),
        ("managed secrets", serde_json::to_string(&secrets_written).unwrap()),
        ("logs", log_text),
    ] {
        for needle in &needles {
            if let Some(at) = text.find(needle.as_str()) {
                let around = &text[text.floor_char_boundary(at.saturating_sub(300))..text.ceil_char_boundary(at + 40)];
                panic!("{what} contain the planted secret ({needle}): …{around}…");
            }
        }
    }
    let reasons: BTreeMap<String, String> = names
        .iter()
        .map(|n| {
            let s = status(&api, n).unwrap();
            (n.clone(), s.conditions.iter().map(|c| c.reason.clone()).collect::<Vec<_>>().join(","))
        })
        .collect();
    assert!(reasons.values().all(|r| !r.contains("TokenIssued")), "{reasons:#?}");
}
