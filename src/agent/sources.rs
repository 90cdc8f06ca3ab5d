//! What the agent reads: ClientCredential and Secret manifests (exactly what `tokensync
//! fetch` reads, through [`crate::manifest`]), plus Secret values from files, directories
//! and environment variables, so that real secrets need not sit in YAML.
//!
//! A Secret's data is built in layers, later ones winning key by key:
//!
//! 1. a Secret manifest in the `-f` files (`data` or `stringData`);
//! 2. `--secret-from-dir [NS/]NAME=DIR`: every file in DIR is a key, exactly how kubelet
//!    mounts a Secret volume (and how systemd passes credentials in $CREDENTIALS_DIRECTORY);
//! 3. `--secret-from-file [NS/]NAME/KEY=PATH`: one key from one file;
//! 4. `--secret-from-env [NS/]NAME/KEY=VAR`: one key from an environment variable.
//!
//! The namespace defaults to `default`, like a manifest without one. A Secret may be
//! defined by flags alone. Messages name files, variables, Secrets and keys, never values.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::ByteString;
use sha2::{Digest, Sha256};

use super::files::is_safe_component;
use crate::api::ClientCredential;
use crate::api::engine::{self, SecretData};
use crate::manifest::Manifests;
use crate::token_state::{self, Prepared, Problem};

/// One key of a Secret taken from a file or an environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySource {
    pub namespace: String,
    pub name: String,
    pub key: String,
    /// The path or the variable name.
    pub from: String,
}

/// A whole Secret taken from a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSource {
    pub namespace: String,
    pub name: String,
    pub dir: PathBuf,
}

/// Parses `[NS/]NAME/KEY=FROM` (clap value parser).
pub fn parse_key_source(s: &str) -> Result<KeySource, String> {
    let (target, from) = s.split_once('=').ok_or("expected [NAMESPACE/]SECRET/KEY=SOURCE")?;
    let parts: Vec<&str> = target.split('/').collect();
    let (namespace, name, key) = match parts.as_slice() {
        [name, key] => ("default", *name, *key),
        [ns, name, key] => (*ns, *name, *key),
        _ => return Err("expected [NAMESPACE/]SECRET/KEY=SOURCE".into()),
    };
    check_names(namespace, name)?;
    if !super::files::is_safe_key(key) {
        return Err(format!("{key:?} is not a valid Secret key"));
    }
    if from.is_empty() {
        return Err("the source after '=' is empty".into());
    }
    Ok(KeySource { namespace: namespace.into(), name: name.into(), key: key.into(), from: from.into() })
}

/// Parses `[NS/]NAME=DIR` (clap value parser).
pub fn parse_dir_source(s: &str) -> Result<DirSource, String> {
    let (target, dir) = s.split_once('=').ok_or("expected [NAMESPACE/]SECRET=DIRECTORY")?;
    let (namespace, name) = target.split_once('/').unwrap_or(("default", target));
    check_names(namespace, name)?;
    if dir.is_empty() {
        return Err("the directory after '=' is empty".into());
    }
    Ok(DirSource { namespace: namespace.into(), name: name.into(), dir: dir.into() })
}

fn check_names(namespace: &str, name: &str) -> Result<(), String> {
    for (what, value) in [("namespace", namespace), ("Secret name", name)] {
        if !is_safe_component(value) {
            return Err(format!("{value:?} is not a valid {what}"));
        }
    }
    Ok(())
}

/// Everything the agent reads its configuration from.
#[derive(Debug, Clone, Default)]
pub struct SourceSpec {
    pub manifests: Vec<PathBuf>,
    pub dirs: Vec<DirSource>,
    pub files: Vec<KeySource>,
    pub envs: Vec<KeySource>,
}

/// One ClientCredential as loaded, ready for a worker.
pub struct LoadedCredential {
    pub namespace: String,
    pub name: String,
    pub cc: ClientCredential,
    pub prepared: Result<Prepared, Problem>,
    /// Changes when anything about this credential changes (spec, annotations, material).
    pub digest: String,
}

impl LoadedCredential {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

type SecretId = (String, String);

/// Reads the manifests and the secret sources. Fails (and a running agent keeps its
/// previous configuration) when a manifest file cannot be read or parsed, or two
/// ClientCredentials share a name; a problem with one credential's material only affects
/// that credential.
pub fn load(spec: &SourceSpec) -> Result<Vec<Arc<LoadedCredential>>, String> {
    let manifests = Manifests::load_files(&spec.manifests).map_err(|e| e.to_string())?;
    if manifests.client_credentials.is_empty() {
        return Err("no ClientCredential found in the given files".into());
    }
    let secrets = secret_data(spec, &manifests);
    let mut out: BTreeMap<SecretId, Arc<LoadedCredential>> = BTreeMap::new();
    for cc in manifests.client_credentials {
        let name = cc.metadata.name.clone().unwrap_or_default();
        let namespace = cc.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        if let Err(e) = check_names(&namespace, &name) {
            return Err(format!("ClientCredential {namespace}/{name}: {e}"));
        }
        let prepared = prepare(&cc, &namespace, &secrets);
        let digest = digest(&cc, &prepared);
        let id = (namespace.clone(), name.clone());
        if out.contains_key(&id) {
            return Err(format!("ClientCredential {namespace}/{name} is defined twice"));
        }
        out.insert(id, Arc::new(LoadedCredential { namespace, name, cc, prepared, digest }));
    }
    Ok(out.into_values().collect())
}

fn prepare(
    cc: &ClientCredential,
    namespace: &str,
    secrets: &BTreeMap<SecretId, Result<SecretData, String>>,
) -> Result<Prepared, Problem> {
    let mut data = BTreeMap::new();
    for name in engine::referenced_secrets(&cc.spec) {
        match secrets.get(&(namespace.to_owned(), name.clone())) {
            Some(Ok(d)) => {
                data.insert(name, d.clone());
            }
            Some(Err(message)) => return Err(Problem { reason: "SourceSecretInvalid", message: message.clone() }),
            None => {}
        }
    }
    token_state::prepare(&cc.spec, cc.metadata.name.as_deref().unwrap_or_default(), &data)
}

/// The data of every Secret the manifests and flags define, by (namespace, name). A
/// Secret whose file, directory or variable cannot be read is an error for the
/// credentials that use it.
fn secret_data(spec: &SourceSpec, manifests: &Manifests) -> BTreeMap<SecretId, Result<SecretData, String>> {
    let mut all: BTreeMap<SecretId, Result<SecretData, String>> = BTreeMap::new();
    for s in &manifests.secrets {
        let id = (
            s.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            s.metadata.name.clone().unwrap_or_default(),
        );
        all.insert(id, Ok(s.data.clone().unwrap_or_default()));
    }
    let mut layer = |namespace: &str, name: &str, values: Result<Vec<(String, Vec<u8>)>, String>| {
        let entry = all.entry((namespace.to_owned(), name.to_owned())).or_insert_with(|| Ok(BTreeMap::new()));
        match (entry.as_mut(), values) {
            (Ok(data), Ok(values)) => data.extend(values.into_iter().map(|(k, v)| (k, ByteString(v)))),
            (Ok(_), Err(e)) => *entry = Err(e),
            (Err(_), _) => {}
        }
    };
    for d in &spec.dirs {
        let flag = format!("--secret-from-dir {}/{}={}", d.namespace, d.name, d.dir.display());
        layer(&d.namespace, &d.name, read_dir_keys(&d.dir).map_err(|e| format!("{flag}: {e}")));
    }
    for f in &spec.files {
        let flag = format!("--secret-from-file {}/{}/{}={}", f.namespace, f.name, f.key, f.from);
        let value = fs::read(&f.from).map_err(|e| format!("{flag}: cannot read the file: {e}"));
        layer(&f.namespace, &f.name, value.map(|v| vec![(f.key.clone(), v)]));
    }
    for e in &spec.envs {
        let flag = format!("--secret-from-env {}/{}/{}={}", e.namespace, e.name, e.key, e.from);
        let value = match std::env::var_os(&e.from) {
            Some(v) => Ok(vec![(e.key.clone(), v.into_encoded_bytes())]),
            None => Err(format!("{flag}: the environment variable is not set")),
        };
        layer(&e.namespace, &e.name, value);
    }
    all
}

/// The keys of a directory laid out like a mounted Secret volume: every regular file (or
/// symlink to one) whose name is a valid key. kubelet's own entries (`..data`,
/// `..2026_...`) start with `..` and are skipped.
fn read_dir_keys(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot read the directory: {e}"))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read the directory: {e}"))?;
        let Some(key) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if !super::files::is_safe_key(&key) {
            continue;
        }
        let path = entry.path();
        if !fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let value = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        out.push((key, value));
    }
    out.sort();
    Ok(out)
}

fn digest(cc: &ClientCredential, prepared: &Result<Prepared, Problem>) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(cc).unwrap_or_default());
    match prepared {
        Ok(p) => {
            h.update(b"\0ok\0");
            h.update(p.inputs.as_bytes());
            h.update(p.bootstrap.as_deref().unwrap_or_default().as_bytes());
        }
        Err(p) => {
            h.update(b"\0err\0");
            h.update(p.reason.as_bytes());
            h.update(p.message.as_bytes());
        }
    }
    hex::encode(&h.finalize()[..16])
}

/// A digest of every file the configuration is read from (manifests, secret files and
/// directories). The agent polls it: when it changes, the configuration is reloaded.
/// Unreadable files count as a distinct state, so their reappearance is noticed.
pub fn watched_digest(spec: &SourceSpec) -> String {
    let mut h = Sha256::new();
    let mut file = |path: &Path| {
        h.update(path.as_os_str().as_encoded_bytes());
        match fs::read(path) {
            Ok(bytes) => {
                h.update(b"\x01");
                h.update((bytes.len() as u64).to_be_bytes());
                h.update(&bytes);
            }
            Err(e) => {
                h.update(b"\x00");
                h.update(format!("{:?}", e.kind()).as_bytes());
            }
        }
    };
    for path in &spec.manifests {
        file(path);
    }
    for f in &spec.files {
        file(Path::new(&f.from));
    }
    for d in &spec.dirs {
        let mut names: Vec<PathBuf> =
            fs::read_dir(&d.dir).map(|entries| entries.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        names.sort();
        file(&d.dir);
        for path in names.iter().filter(|p| !p.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(b".."))) {
            file(path);
        }
    }
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_and_dir_sources_parse_with_an_optional_namespace() {
        let k = parse_key_source("team-a/demo-client/client_secret=/run/secrets/cs").unwrap();
        assert_eq!((k.namespace.as_str(), k.name.as_str(), k.key.as_str()), ("team-a", "demo-client", "client_secret"));
        assert_eq!(k.from, "/run/secrets/cs");
        let k = parse_key_source("demo-client/client_secret=CLIENT_SECRET").unwrap();
        assert_eq!((k.namespace.as_str(), k.from.as_str()), ("default", "CLIENT_SECRET"));
        assert!(parse_key_source("demo-client=X").is_err());
        assert!(parse_key_source("a/b/c/d=X").is_err());
        assert!(parse_key_source("demo/../x=X").is_err());
        assert!(parse_key_source("demo/key=").is_err());
        let d = parse_dir_source("team-a/demo-client=/etc/creds").unwrap();
        assert_eq!((d.namespace.as_str(), d.name.as_str()), ("team-a", "demo-client"));
        assert_eq!(parse_dir_source("demo-client=/x").unwrap().namespace, "default");
        assert!(parse_dir_source("../x=/x").is_err());
    }

    #[test]
    fn layers_override_manifest_values_and_define_secrets_alone() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("cc.yaml");
        std::fs::write(
            &manifest,
            "apiVersion: v1\nkind: Secret\nmetadata: {name: demo-client, namespace: team-a}\nstringData: {client_id: from-yaml, client_secret: yaml}\n---\napiVersion: tokensync.io/v1alpha1\nkind: ClientCredential\nmetadata: {name: demo, namespace: team-a}\nspec: {tokenEndpoint: 'https://auth.example/token', credentialsRef: {name: demo-client}}\n",
        )
        .unwrap();
        let mounted = dir.path().join("mounted");
        std::fs::create_dir(&mounted).unwrap();
        std::fs::write(mounted.join("client_id"), "from-dir\n").unwrap();
        std::fs::write(mounted.join("..data"), "ignored").unwrap();
        let secret_file = dir.path().join("cs");
        std::fs::write(&secret_file, "from-file").unwrap();
        let spec = SourceSpec {
            manifests: vec![manifest.clone()],
            dirs: vec![parse_dir_source(&format!("team-a/demo-client={}", mounted.display())).unwrap()],
            files: vec![
                parse_key_source(&format!("team-a/demo-client/client_secret={}", secret_file.display())).unwrap(),
            ],
            envs: vec![],
        };
        let loaded = load(&spec).unwrap();
        let prep = loaded[0].prepared.as_ref().unwrap();
        assert_eq!(prep.credentials.client_id, "from-dir");
        use secrecy::ExposeSecret;
        assert_eq!(prep.credentials.client_secret.as_ref().unwrap().expose_secret(), "from-file");

        let before = watched_digest(&spec);
        std::fs::write(&secret_file, "rotated").unwrap();
        assert_ne!(watched_digest(&spec), before);
        let rotated = load(&spec).unwrap();
        assert_ne!(rotated[0].digest, loaded[0].digest);

        let missing = SourceSpec {
            envs: vec![parse_key_source("team-a/demo-client/client_secret=TOKENSYNC_TEST_UNSET_VARIABLE").unwrap()],
            ..spec
        };
        let problem = load(&missing).unwrap()[0].prepared.as_ref().err().unwrap().clone();
        assert_eq!(problem.reason, "SourceSecretInvalid");
        assert!(problem.message.contains("TOKENSYNC_TEST_UNSET_VARIABLE"), "{}", problem.message);
    }
}
