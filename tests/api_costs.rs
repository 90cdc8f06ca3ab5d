//! What the controller costs the API server, counted (never timed): the regression guard for
//! issue 13. A routine renewal is one token request, no GET, three writes (state Secret,
//! target Secret, status) and one reconcile: the watch events of those writes start none; a
//! restart with valid tokens writes nothing, also while its caches are still syncing and
//! through a later resync. Each count covers a window that ends at a later event (the next
//! renewal's token request, a finished resync), not the moment the counted work ended. The controller runs in-process against the API server double, whose request log
//! is what is counted.

mod support;
mod token_server;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use serde_json::json;
use support::apiserver::{ApiServer, Fault, RequestRecord, Verb};
use support::controller::*;
use token_server::{Reply, TokenServer};
use tokensync::api::ClientCredential;
use tokensync::metrics::Metrics;

/// A token server issuing `token-1`, `token-2`, ... that live `lifetime` seconds.
async fn issuer(lifetime: u64) -> TokenServer {
    let issued = Arc::new(AtomicU32::new(0));
    TokenServer::start(move |_| {
        let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::json(200, json!({"access_token": format!("token-{n}"), "token_type": "Bearer", "expires_in": lifetime}))
    })
    .await
}

async fn credential(api: &ApiServer, name: &str, server: &TokenServer) {
    create_secret(api, source_secret(&format!("{name}-client"), &[("client_id", "id"), ("client_secret", "s")])).await;
    Cc::new(name, &server.url("/token")).create(api).await;
}

fn gets(log: &[RequestRecord]) -> Vec<String> {
    log.iter()
        .filter(|r| r.verb == Verb::Get)
        .map(|r| format!("GET {}/{}", r.resource, r.name.clone().unwrap_or_default()))
        .collect()
}

fn writes(log: &[RequestRecord]) -> Vec<String> {
    log.iter()
        .filter(|r| r.verb.is_write())
        .map(|r| {
            let sub = r.subresource.as_deref().map(|s| format!("/{s}")).unwrap_or_default();
            format!(
                "{:?} {}{sub}/{} -> {} changed={}",
                r.verb,
                r.resource,
                r.name.clone().unwrap_or_default(),
                r.code,
                r.changed
            )
        })
        .collect()
}

/// For each token request, as it arrived: how long the double's request log was, and how
/// many reconciles the controller had completed.
type Marks = Arc<Mutex<Vec<(usize, u64)>>>;

#[tokio::test]
async fn a_routine_renewal_costs_one_token_request_no_get_three_writes_and_one_reconcile() {
    let api = api_server().await;
    let metrics = Arc::new(Metrics::default());
    let marks: Marks = Marks::default();
    let server = {
        let (api, metrics, marks) = (api.clone(), metrics.clone(), marks.clone());
        TokenServer::start(move |_| {
            let mut marks = marks.lock().unwrap();
            marks.push((api.inspect(|v| v.requests().len()), metrics.reconciles()));
            let n = marks.len();
            // Renewed about every 1.5 s.
            Reply::json(200, json!({"access_token": format!("token-{n}"), "token_type": "Bearer", "expires_in": 3}))
        })
        .await
    };
    let _c = start_with(api.client(), args(&["--min-renewal-interval", "1s"]), metrics.clone());
    credential(&api, "demo", &server).await;
    wait_secret_value(&api, "demo", "access_token", "token-6").await;

    // Three whole renewals, and everything after the last one until the next one begins:
    // from the arrival of token request 3 to that of token request 6. The window holds the
    // writes of renewals 3, 4 and 5, every reconcile their watch events cause, and the reads
    // before requests 4, 5 and 6.
    let marks = marks.lock().unwrap().clone();
    let ((from, reconciled_from), (to, reconciled_to)) = (marks[2], marks[5]);
    let log = api.requests()[from..to].to_vec();
    let (gets, writes) = (gets(&log), writes(&log));
    assert!(gets.is_empty(), "a routine renewal reads nothing: {gets:#?}");
    assert_eq!(writes.len(), 9, "state, target and status once per renewal, nothing else: {writes:#?}");
    for (verb, resource, sub) in [(Verb::Apply, "secrets", None), (Verb::Patch, "clientcredentials", Some("status"))] {
        let n =
            log.iter().filter(|r| r.verb == verb && r.resource == resource && r.subresource.as_deref() == sub).count();
        assert_eq!(n, if resource == "secrets" { 6 } else { 3 }, "{verb:?} {resource}: {writes:#?}");
    }
    assert!(log.iter().filter(|r| r.verb.is_write()).all(|r| r.changed && r.code < 300), "no no-op write: {writes:#?}");
    // Our own three writes start no reconcile of their own once the watch shows them: before,
    // each did (four reconciles per renewal).
    let reconciles = reconciled_to - reconciled_from;
    assert_eq!(reconciles, 3, "one reconcile per renewal");
    println!("3 renewals: {} GETs, {} writes, {reconciles} reconciles", gets.len(), writes.len());
}

#[tokio::test]
async fn a_restart_with_valid_tokens_writes_nothing_even_while_its_caches_sync() {
    let api = api_server().await;
    let server = issuer(3600).await;
    let first = start(&api, args(&[]));
    for name in ["one", "two", "three"] {
        credential(&api, name, &server).await;
    }
    for name in ["one", "two", "three"] {
        wait_condition(&api, name, "Ready", ("True", "TokenIssued")).await;
    }
    first.crash();

    // The Secret lists (or watch-lists, with --initial-list=streaming) fail at first, so the
    // ClientCredentials arrive (and reconciles start) well before the managed Secrets are
    // cached: every target and state Secret looks missing.
    api.clear_requests();
    api.inject(Fault::verbs(&[Verb::List, Verb::Watch]).resource("secrets").code(500).times(2));
    let second = start(&api, args(&[]));
    assert!(second.metrics.wait_for_reconciles(3, WAIT).await, "the new controller reconciled each credential");
    // Then the Secrets are cached, and their arrival reconciles the credentials again. A
    // window after that: one more write (not through the API: not in the request log), then
    // every watch is cut and the history compacted, so each watcher whose version is older
    // relists (the ClientCredentials' does: a full resync), and every credential is
    // reconciled once more.
    let synced = api
        .wait_for(
            |v| {
                v.injected(500) == 2
                    && v.requests().iter().any(|r| r.resource == "secrets" && r.code == 200 && is_initial_list(r))
            },
            WAIT,
        )
        .await;
    assert!(synced.is_ok(), "the Secret lists failed twice, then the Secrets were listed");
    assert_eq!(api.faults_left(), 0);
    let resync = api.inspect(|v| v.requests().len());
    api.put(&source_secret("unrelated", &[("k", "v")])).unwrap();
    api.compact();
    api.drop_watches();
    // The reconciles completed when the relist was answered: the three it causes come after.
    let reconciled = api
        .wait_for_value(
            |v| {
                v.requests()[resync..]
                    .iter()
                    .any(|r| r.resource == "clientcredentials" && r.code == 200 && is_initial_list(r))
                    .then(|| second.metrics.reconciles())
            },
            WAIT,
        )
        .await
        .expect("the ClientCredentials were listed again");
    assert!(second.metrics.wait_for_reconciles(reconciled + 3, WAIT).await, "each credential reconciled again");

    let log = api.requests();
    assert_eq!(writes(&log), Vec::<String>::new(), "a restart writes nothing");
    assert_eq!(server.requests().len(), 3, "and requests no token");
    let gets = gets(&log);
    assert!(gets.len() <= 3, "at most the source Secrets are read: {gets:#?}");
}

/// A LIST, or a watch-list (`--initial-list=streaming`).
fn is_initial_list(r: &RequestRecord) -> bool {
    r.verb == Verb::List || (r.verb == Verb::Watch && r.send_initial_events.as_deref() == Some("true"))
}

#[tokio::test]
async fn issuing_many_first_tokens_at_once_costs_one_request_each_and_no_no_op_write() {
    let api = api_server().await;
    let per_client: Arc<std::sync::Mutex<std::collections::BTreeMap<String, u32>>> = Default::default();
    let counts = per_client.clone();
    let server = TokenServer::start(move |r| {
        let id = r.params().get("client_id").cloned().unwrap_or_default();
        *counts.lock().unwrap().entry(id.clone()).or_default() += 1;
        Reply::json(200, json!({"access_token": format!("{id}-token"), "token_type": "Bearer", "expires_in": 3600}))
    })
    .await;
    const N: usize = 100;
    let names: Vec<String> = (0..N).map(|i| format!("cc-{i:03}")).collect();
    for name in &names {
        create_secret(&api, source_secret(&format!("{name}-client"), &[("client_id", name), ("client_secret", "s")]))
            .await;
        Cc::new(name, &server.url("/token")).create(&api).await;
    }
    let _c = start(&api, args(&[]));
    let all_ready = api
        .wait_for(
            |v| {
                names.iter().all(|n| {
                    v.get::<ClientCredential>(Some(NS), n)
                        .and_then(|c| c.status)
                        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
            },
            WAIT * 3,
        )
        .await;
    assert!(all_ready.is_ok(), "every credential became Ready");
    let counts = per_client.lock().unwrap().clone();
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty() && counts.len() == N, "one token request per credential: {twice:?}");
    let noop: Vec<String> = api
        .requests()
        .iter()
        .filter(|r| r.verb.is_write() && r.code < 300 && !r.changed)
        .map(|r| format!("{:?} {}/{:?}", r.verb, r.resource, r.name))
        .collect();
    assert!(noop.is_empty(), "no no-op write: {noop:#?}");
    // The source Secret and the target (a Secret tokensync does not manage may be there) are
    // read; the state Secret is not: the synced cache says it is not there.
    let secret_gets = api.requests().iter().filter(|r| r.verb == Verb::Get && r.resource == "secrets").count();
    assert!(secret_gets <= 2 * N, "at most two Secret GETs per first token: {secret_gets} for {N}");
    println!("{N} first tokens: {secret_gets} Secret GETs");
}

/// `tokensync_kube_requests_total` lines of a /metrics text, as "verb resource code" ->
/// count.
fn kube_requests_metric(text: &str) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("tokensync_kube_requests_total{")) {
        let (labels, value) = line.split_once("} ").expect("a sample line");
        let label = |key: &str| {
            labels.split(',').find_map(|kv| kv.strip_prefix(&format!("{key}=\""))?.strip_suffix('"')).unwrap_or("?")
        };
        let key = format!("{} {} {}", label("verb"), label("resource"), label("code"));
        *out.entry(key).or_default() += value.trim().parse::<u64>().expect("a count");
    }
    out
}

/// The same counts from the double's log, for the controller's own requests.
fn kube_requests_logged(log: &[RequestRecord]) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for r in log.iter().filter(|r| r.client.as_deref() == Some(CONTROLLER_CLIENT)) {
        let sub = r.subresource.as_deref().map(|s| format!("/{s}")).unwrap_or_default();
        let verb = format!("{:?}", r.verb).to_lowercase();
        *out.entry(format!("{verb} {}{sub} {}xx", r.resource, r.code / 100)).or_default() += 1;
    }
    out
}

/// The metric the benchmark reads on a real cluster (where there is no request log) counts
/// exactly what the API server answered, verb by verb, retried attempts and failures
/// included; its labels name no object and no namespace.
#[tokio::test]
async fn the_kube_requests_metric_counts_what_the_api_server_answered() {
    let api = api_server().await;
    let server = issuer(3600).await;
    // A 503 is retried by the client (each attempt is a request); a 500 on the Secret list
    // makes the watcher back off and list again.
    api.inject(Fault::verbs(&[Verb::Get]).resource("secrets").code(503).times(1));
    api.inject(Fault::verbs(&[Verb::List]).resource("secrets").code(500).times(1));
    // Paged initial lists whatever TOKENSYNC_INITIAL_LIST says: the LISTs (one of them failed)
    // are what is counted.
    let c = start_counted(&api, args(&["--initial-list", "paged"]));
    for name in ["one", "two"] {
        credential(&api, name, &server).await;
    }
    for name in ["one", "two"] {
        wait_condition(&api, name, "Ready", ("True", "TokenIssued")).await;
    }
    // A new target name: the old target is deleted.
    let ccs: kube::Api<ClientCredential> = kube::Api::namespaced(api.client(), NS);
    let patch = json!({"spec": {"target": {"name": "one-renamed"}}});
    ccs.patch("one", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
    let moved = api
        .wait_for(
            |v| v.get::<Secret>(Some(NS), "one").is_none() && v.get::<Secret>(Some(NS), "one-renamed").is_some(),
            WAIT,
        )
        .await;
    assert!(moved.is_ok(), "the target moved to its new name");

    // The metric is counted when the answer reaches the client, the log when the double
    // sends it: wait until the two agree.
    let counted = || {
        let mut m = kube_requests_metric(&c.metrics.encode());
        m.remove("get nonresource 2xx"); // /.well-known/openid-configuration: not in the log
        m
    };
    let agreed = tokio::time::timeout(WAIT, async {
        while counted() != kube_requests_logged(&api.requests()) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let (metric, logged) = (counted(), kube_requests_logged(&api.requests()));
    assert!(agreed.is_ok(), "the metric counts what the API server logged:\nmetric {metric:#?}\nlog {logged:#?}");
    for key in [
        "get secrets 2xx",
        "get secrets 5xx",
        "list secrets 2xx",
        "list secrets 5xx",
        "watch secrets 2xx",
        "list clientcredentials 2xx",
        "watch clientcredentials 2xx",
        "apply secrets 2xx",
        "patch clientcredentials/status 2xx",
        "create events 2xx",
        "delete secrets 2xx",
    ] {
        assert!(metric.get(key).is_some_and(|n| *n > 0), "{key} counted: {metric:#?}");
    }
    assert_eq!((metric["get secrets 5xx"], metric["list secrets 5xx"]), (1, 1), "{metric:#?}");
    println!("requests of two first tokens and a target rename: {metric:#?}");
    let text = c.metrics.encode();
    assert!(text.contains("tokensync_kube_requests_total{verb=\"get\",resource=\"nonresource\",code=\"2xx\"} 1"));
    for line in text.lines().filter(|l| l.starts_with("tokensync_kube_requests_total")) {
        for word in [NS, "one", "two", "demo"] {
            assert!(!line.contains(&format!("\"{word}")), "no name or namespace in a label: {line}");
        }
    }
}
