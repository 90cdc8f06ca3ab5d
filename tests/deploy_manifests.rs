//! The plain manifests in deploy/manifests (cluster-wide) and deploy/manifests/namespaced:
//! every object parses into its Kubernetes type, the RBAC grants exactly the API calls the
//! controller makes (tests/deploy/mod.rs keeps the table), and the Deployment runs the
//! controller hardened, with leader election and probes on its admin port.

mod deploy;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use deploy::{LEASE, NEEDED, Object, SYSTEM_NAMESPACE, Scope};
use k8s_openapi::api::rbac::v1::{RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

const CLUSTER: &str = "deploy/manifests";
const NAMESPACED: &str = "deploy/manifests/namespaced";

fn install(dir: &str) -> Vec<Object> {
    let path = format!("{dir}/tokensync.yaml");
    deploy::parse(&deploy::read(&path), &path)
}

fn kinds(objects: &[Object]) -> BTreeMap<&'static str, usize> {
    let mut out = BTreeMap::new();
    for o in objects {
        *out.entry(o.kind()).or_default() += 1;
    }
    out
}

#[test]
fn every_manifest_parses_into_its_kubernetes_type() {
    let cluster = install(CLUSTER);
    let expected = BTreeMap::from([
        ("Namespace", 1),
        ("ServiceAccount", 1),
        ("ClusterRole", 1),
        ("ClusterRoleBinding", 1),
        ("Role", 1),
        ("RoleBinding", 1),
        ("Deployment", 1),
        ("Service", 1),
        ("PodDisruptionBudget", 1),
    ]);
    assert_eq!(kinds(&cluster), expected);

    let namespaced = install(NAMESPACED);
    let watched = deploy::watched_namespaces(&deploy::args(&namespaced));
    assert_eq!(watched, ["team-a", "team-b"]);
    let expected = BTreeMap::from([
        ("Namespace", 1),
        ("ServiceAccount", 1),
        ("Role", 1 + watched.len()),
        ("RoleBinding", 1 + watched.len()),
        ("Deployment", 1),
        ("Service", 1),
        ("PodDisruptionBudget", 1),
    ]);
    assert_eq!(kinds(&namespaced), expected);

    for objects in [&cluster, &namespaced] {
        let keys: BTreeSet<String> = objects.iter().map(Object::key).collect();
        assert_eq!(keys.len(), objects.len(), "two objects with the same kind, namespace and name");
        for o in objects.iter() {
            let json = o.to_json();
            let namespaced_kind =
                !matches!(o, Object::Namespace(_) | Object::ClusterRole(_) | Object::ClusterRoleBinding(_));
            assert_eq!(
                json["metadata"]["namespace"].is_string(),
                namespaced_kind,
                "{}: a namespaced object names its namespace (so that `kubectl apply -f` needs no -n), a cluster-scoped one none",
                o.key()
            );
        }
    }
}

#[test]
fn kustomizations_list_exactly_the_manifest_files_next_to_them() {
    for dir in [CLUSTER, NAMESPACED] {
        let kustomization: serde_json::Value =
            serde_saphyr::from_str(&deploy::read(format!("{dir}/kustomization.yaml"))).unwrap();
        assert_eq!(kustomization["kind"], "Kustomization");
        let listed: BTreeSet<String> = kustomization["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect();
        let files: BTreeSet<String> = std::fs::read_dir(deploy::repo().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|f| (f.ends_with(".yaml") || f.ends_with(".yml")) && f != "kustomization.yaml")
            .collect();
        assert_eq!(listed, files, "{dir}/kustomization.yaml");
        // Nothing that would change the objects: `kubectl apply -k` and `kubectl apply -f`
        // on the listed file install the same thing.
        let keys: BTreeSet<&str> = kustomization.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(["apiVersion", "kind", "resources"]), "{dir}/kustomization.yaml");
    }
}

fn role_rules(objects: &[Object], namespace: &str, name: &str) -> Vec<k8s_openapi::api::rbac::v1::PolicyRule> {
    objects
        .iter()
        .find_map(|o| match o {
            Object::Role(r)
                if r.metadata.namespace.as_deref() == Some(namespace) && r.metadata.name.as_deref() == Some(name) =>
            {
                Some(r.rules.clone().unwrap_or_default())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Role {namespace}/{name}"))
}

fn the_service_account() -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: "tokensync".into(),
        namespace: Some(SYSTEM_NAMESPACE.into()),
        api_group: None,
    }
}

/// Every binding binds exactly the controller's ServiceAccount to a role of the install.
fn bindings(objects: &[Object]) -> BTreeSet<(Option<String>, RoleRefKey)> {
    let mut out = BTreeSet::new();
    for o in objects {
        let (ns, role_ref, subjects) = match o {
            Object::ClusterRoleBinding(b) => (None, &b.role_ref, &b.subjects),
            Object::RoleBinding(b) => (b.metadata.namespace.clone(), &b.role_ref, &b.subjects),
            _ => continue,
        };
        assert_eq!(subjects.as_deref(), Some(&[the_service_account()][..]), "{}", o.key());
        out.insert((ns, RoleRefKey::from(role_ref)));
    }
    out
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RoleRefKey(String, String);

impl From<&RoleRef> for RoleRefKey {
    fn from(r: &RoleRef) -> Self {
        assert_eq!(r.api_group, "rbac.authorization.k8s.io");
        RoleRefKey(r.kind.clone(), r.name.clone())
    }
}

#[test]
fn cluster_wide_rbac_grants_exactly_what_the_controller_calls() {
    let objects = install(CLUSTER);
    let cluster_role = objects
        .iter()
        .find_map(|o| match o {
            Object::ClusterRole(r) => Some(r),
            _ => None,
        })
        .unwrap();
    assert_eq!(cluster_role.metadata.name.as_deref(), Some("tokensync"));
    assert!(cluster_role.aggregation_rule.is_none());
    let granted = deploy::granted(cluster_role.rules.as_deref().unwrap_or_default(), "ClusterRole tokensync");
    assert_eq!(granted, deploy::needed(Scope::Watched, LEASE), "ClusterRole tokensync");

    let leader = role_rules(&objects, SYSTEM_NAMESPACE, "tokensync-leader-election");
    let granted = deploy::granted(&leader, "Role tokensync-leader-election");
    assert_eq!(granted, deploy::needed(Scope::Own, LEASE), "Role tokensync-leader-election");

    assert_eq!(
        bindings(&objects),
        BTreeSet::from([
            (None, RoleRefKey("ClusterRole".into(), "tokensync".into())),
            (Some(SYSTEM_NAMESPACE.into()), RoleRefKey("Role".into(), "tokensync-leader-election".into())),
        ])
    );
}

#[test]
fn namespaced_install_grants_secrets_only_in_the_watched_namespaces() {
    let objects = install(NAMESPACED);
    assert!(
        !objects.iter().any(|o| matches!(o, Object::ClusterRole(_) | Object::ClusterRoleBinding(_))),
        "the namespaced install has no cluster-wide RBAC"
    );
    let watched = deploy::watched_namespaces(&deploy::args(&objects));
    let mut expected_bindings = BTreeSet::from([(
        Some(SYSTEM_NAMESPACE.to_owned()),
        RoleRefKey("Role".into(), "tokensync-leader-election".into()),
    )]);
    for ns in &watched {
        let rules = role_rules(&objects, ns, "tokensync");
        assert_eq!(
            deploy::granted(&rules, &format!("Role {ns}/tokensync")),
            deploy::needed(Scope::Watched, LEASE),
            "Role {ns}/tokensync"
        );
        expected_bindings.insert((Some(ns.clone()), RoleRefKey("Role".into(), "tokensync".into())));
    }
    let leader = role_rules(&objects, SYSTEM_NAMESPACE, "tokensync-leader-election");
    assert_eq!(deploy::granted(&leader, "leader election Role"), deploy::needed(Scope::Own, LEASE));
    // A Role per watched namespace and nothing else: Roles in other namespaces would be
    // permissions the controller never uses.
    assert_eq!(bindings(&objects), expected_bindings);
    let roles = objects.iter().filter(|o| matches!(o, Object::Role(_))).count();
    assert_eq!(roles, watched.len() + 1);
}

/// Kubernetes API calls, as the kube client methods and kube-runtime helpers that make them.
const API_CALL_PATTERNS: &[&str] = &[
    ".get_opt(",
    ".get_metadata(",
    ".get_status(",
    ".create(&",
    ".replace(&",
    ".replace_status(",
    ".patch(&",
    ".patch_status(",
    ".patch_metadata(",
    ".delete(",
    ".delete_collection(",
    ".list(&",
    ".list_metadata(",
    ".watch(&",
    ".watch_metadata(",
    "watcher(",
    "metadata_watcher(",
    ".publish(",
    ".evict(",
    ".create_token_request(",
    "Api::<",
];

#[test]
fn every_kubernetes_api_call_in_the_code_is_a_row_of_the_rbac_table() {
    // Each call site the table names still exists ...
    for needed in NEEDED {
        for (file, text) in needed.sites {
            assert!(deploy::read(file).contains(text), "{file} no longer contains `{text}`: update the RBAC table");
        }
    }
    // ... and each API call in the code (outside unit tests) is one of them.
    let mut files = Vec::new();
    let mut dirs = vec![deploy::repo().join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut unexplained = Vec::new();
    for path in files {
        let file = path.strip_prefix(deploy::repo()).unwrap().to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(&path).unwrap();
        // Only code that uses the Kubernetes client can call the API (a comment that mentions
        // the kubelet does not make a file one).
        if !text.contains("kube::") {
            continue;
        }
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (i, line) in code.lines().enumerate() {
            let line = line.trim();
            if line.starts_with("//") {
                continue;
            }
            // Every call on the line must be named by a site of its own: a line with two calls
            // (say, two GETs joined) is not explained by a row that names only one of them.
            // Calls are counted by where the pattern ends, so `metadata_watcher(` is one call.
            let calls: BTreeSet<usize> =
                API_CALL_PATTERNS.iter().flat_map(|p| line.match_indices(p).map(move |(at, _)| at + p.len())).collect();
            let sites: BTreeSet<&str> = NEEDED
                .iter()
                .flat_map(|n| n.sites)
                .filter(|(f, t)| *f == file && line.contains(t))
                .map(|(_, t)| *t)
                .collect();
            if calls.len() > sites.len() {
                unexplained.push(format!("{file}:{}: {line}", i + 1));
            }
        }
    }
    assert!(
        unexplained.is_empty(),
        "Kubernetes API calls that no row of the RBAC table (tests/deploy/mod.rs) names; grant what they need in \
         deploy/manifests, the Helm chart and docs/install.md, then add a row:\n{}",
        unexplained.join("\n")
    );
}

fn controller_help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tokensync")).args(["controller", "--help"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_controller_flag_in_the_manifests_exists() {
    let help = controller_help();
    for dir in [CLUSTER, NAMESPACED] {
        let args = deploy::args(&install(dir));
        assert_eq!(args[0], "controller", "{dir}: the image's entrypoint is the tokensync binary");
        for arg in &args[1..] {
            let flag = arg.split('=').next().unwrap();
            let known = flag.starts_with("--") && help.split_whitespace().any(|w| w.trim_end_matches(',') == flag);
            assert!(known, "{dir}: {flag} is not a flag of `tokensync controller`");
        }
        assert!(args.contains(&"--leader-elect".to_owned()), "{dir}");
        assert!(args.contains(&"--log-format=json".to_owned()), "{dir}");
    }
    // The probes and the Service use the admin server's default port.
    assert!(help.contains("[default: 0.0.0.0:8080]"), "the admin server's default address changed");
    // The leader election Lease name in the Roles is the controller's default.
    assert!(help.contains(&format!("[default: {LEASE}]")), "the default Lease name changed");
}

#[test]
fn the_deployment_runs_hardened_with_leader_election_and_probes_on_the_admin_port() {
    for dir in [CLUSTER, NAMESPACED] {
        let objects = install(dir);
        let d = deploy::deployment(&objects);
        assert_eq!(d.metadata.namespace.as_deref(), Some(SYSTEM_NAMESPACE));
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2), "{dir}");
        let template_labels = spec.template.metadata.as_ref().unwrap().labels.clone().unwrap();
        let selector = spec.selector.match_labels.clone().unwrap();
        assert!(selector.iter().all(|(k, v)| template_labels.get(k) == Some(v)), "{dir}: selector matches the pods");

        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("tokensync"));
        assert!(pod.termination_grace_period_seconds.is_some_and(|s| (15..=120).contains(&s)));
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert!(psc.run_as_user.is_some_and(|u| u != 0));
        assert_eq!(psc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");

        assert_eq!(pod.containers.len(), 1);
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_owned()][..]));
        assert!(sc.capabilities.as_ref().unwrap().add.is_none());
        assert!(sc.privileged.is_none_or(|p| !p));
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");

        let image = c.image.as_deref().unwrap();
        assert_eq!(image.rsplit_once(':').unwrap().1, env!("CARGO_PKG_VERSION"), "{dir}: image tag = crate version");

        let resources = c.resources.as_ref().unwrap();
        for key in ["cpu", "memory"] {
            assert!(resources.requests.as_ref().unwrap().contains_key(key), "{dir}: requests.{key}");
            assert!(resources.limits.as_ref().unwrap().contains_key(key), "{dir}: limits.{key}");
        }

        let env: BTreeMap<String, String> = c
            .env
            .iter()
            .flatten()
            .map(|e| {
                let field = e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.clone());
                (e.name.clone(), field.unwrap_or_default())
            })
            .collect();
        assert_eq!(env.get("POD_NAME").map(String::as_str), Some("metadata.name"));
        assert_eq!(env.get("POD_NAMESPACE").map(String::as_str), Some("metadata.namespace"));

        let port = c.ports.as_ref().unwrap().iter().find(|p| p.name.as_deref() == Some("admin")).unwrap();
        assert_eq!(port.container_port, 8080);
        let probe = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            let get = p.as_ref().unwrap().http_get.clone().unwrap();
            assert_eq!(get.port, IntOrString::String("admin".into()));
            get.path.unwrap()
        };
        assert_eq!(probe(&c.liveness_probe), "/healthz");
        assert_eq!(probe(&c.readiness_probe), "/readyz");

        // The metrics Service and the PodDisruptionBudget select these pods.
        let service = objects
            .iter()
            .find_map(|o| match o {
                Object::Service(s) => Some(s),
                _ => None,
            })
            .unwrap();
        let sspec = service.spec.as_ref().unwrap();
        assert_eq!(sspec.selector.as_ref(), Some(&selector));
        let sport = &sspec.ports.as_ref().unwrap()[0];
        assert_eq!(sport.name.as_deref(), Some("metrics"));
        assert_eq!(sport.target_port, Some(IntOrString::String("admin".into())));
        let pdb = objects
            .iter()
            .find_map(|o| match o {
                Object::PodDisruptionBudget(p) => Some(p),
                _ => None,
            })
            .unwrap();
        let pspec = pdb.spec.as_ref().unwrap();
        assert_eq!(pspec.min_available, Some(IntOrString::Int(1)));
        assert_eq!(pspec.selector.as_ref().unwrap().match_labels.as_ref(), Some(&selector));

        let ns = objects
            .iter()
            .find_map(|o| match o {
                Object::Namespace(n) => Some(n),
                _ => None,
            })
            .unwrap();
        assert_eq!(ns.metadata.name.as_deref(), Some(SYSTEM_NAMESPACE));
        assert_eq!(
            ns.metadata.labels.as_ref().unwrap().get("pod-security.kubernetes.io/enforce").map(String::as_str),
            Some("restricted"),
            "the pod meets the restricted Pod Security Standard, so its namespace enforces it"
        );
    }
}

#[test]
fn the_two_installs_differ_only_in_rbac_and_watched_namespaces() {
    let common = |objects: Vec<Object>| -> BTreeMap<String, serde_json::Value> {
        objects
            .into_iter()
            .filter(|o| {
                let json = o.to_json();
                let ns = json["metadata"]["namespace"].as_str().unwrap_or(SYSTEM_NAMESPACE).to_owned();
                !matches!(o, Object::ClusterRole(_) | Object::ClusterRoleBinding(_)) && ns == SYSTEM_NAMESPACE
            })
            .map(|o| {
                let mut json = o.to_json();
                if let Some(args) =
                    json.pointer_mut("/spec/template/spec/containers/0/args").and_then(|a| a.as_array_mut())
                {
                    args.retain(|a| !a.as_str().unwrap().starts_with("--namespace="));
                }
                (o.key(), json)
            })
            .collect()
    };
    let cluster = common(install(CLUSTER));
    let namespaced = common(install(NAMESPACED));
    assert_eq!(cluster.keys().collect::<Vec<_>>(), namespaced.keys().collect::<Vec<_>>());
    for (key, object) in &cluster {
        assert_eq!(object, &namespaced[key], "{key} differs between the cluster-wide and the namespaced install");
    }
}

#[test]
fn the_dockerfile_copies_every_directory_cargo_needs_to_read_the_manifest() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    // Every `path = "dir/..."` of a declared target: cargo fails on a missing target file.
    for line in manifest.lines().filter(|l| l.trim_start().starts_with("path = ")) {
        let path = line.split('"').nth(1).unwrap();
        let dir = path.split('/').next().unwrap();
        assert!(
            dockerfile.lines().any(|l| l.starts_with("COPY ") && l.split_whitespace().nth(1) == Some(dir)),
            "the Dockerfile does not COPY {dir}/ (needed for {path} declared in Cargo.toml)"
        );
    }
}

#[test]
fn the_cluster_credentials_overlay_grants_exactly_what_the_cluster_controller_adds_and_enables_it() {
    let dir = "deploy/cluster-credentials";
    let objects = deploy::parse(&deploy::read(format!("{dir}/cluster-credentials.yaml")), dir);
    let role = objects
        .iter()
        .find_map(|o| match o {
            Object::ClusterRole(r) => Some(r),
            _ => None,
        })
        .expect("a ClusterRole");
    assert_eq!(role.metadata.name.as_deref(), Some("tokensync-cluster-credentials"));
    let granted =
        deploy::granted(role.rules.as_deref().unwrap_or_default(), "ClusterRole tokensync-cluster-credentials");
    assert_eq!(granted, deploy::needed(Scope::ClusterCredentials, LEASE));
    assert_eq!(
        bindings(&objects),
        BTreeSet::from([(None, RoleRefKey("ClusterRole".into(), "tokensync-cluster-credentials".into()))])
    );
    // The overlay builds on the cluster-wide install (which grants Secrets everywhere) and
    // turns the controller on.
    let kustomization: serde_json::Value =
        serde_saphyr::from_str(&deploy::read(format!("{dir}/kustomization.yaml"))).unwrap();
    assert_eq!(kustomization["resources"], serde_json::json!(["../manifests", "cluster-credentials.yaml"]));
    let patch = kustomization["patches"][0]["patch"].as_str().unwrap();
    assert!(patch.contains("value: --cluster-credentials") && patch.contains("/containers/0/args/-"), "{patch}");
    assert!(controller_help().contains("--cluster-credentials"));
}

#[test]
fn the_cli_user_role_grants_exactly_what_status_and_renew_call() {
    let path = "deploy/cli/tokensync-cli.yaml";
    let objects = deploy::parse(&deploy::read(path), path);
    let [Object::ClusterRole(role)] = objects.as_slice() else { panic!("{path}: one ClusterRole, nothing else") };
    assert_eq!(role.metadata.name.as_deref(), Some("tokensync-cli"));
    let granted = deploy::granted(role.rules.as_deref().unwrap_or_default(), "ClusterRole tokensync-cli");
    assert_eq!(granted, deploy::needed(Scope::Cli, LEASE), "{path}");
}
