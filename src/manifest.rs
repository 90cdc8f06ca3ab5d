//! Reading ClientCredentials and Secrets from YAML files, for `tokensync fetch` (and the
//! tests that prove the examples are valid). Multi-document files are split on `---`;
//! documents of other kinds are ignored so a whole app manifest can be passed in.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

use crate::api::ClientCredential;

/// What a set of manifest files holds.
#[derive(Default, Debug)]
pub struct Manifests {
    pub client_credentials: Vec<ClientCredential>,
    pub secrets: Vec<Secret>,
}

/// A manifest that could not be read; the message names the file and document.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ManifestError(pub String);

impl Manifests {
    /// Reads and merges several files.
    pub fn load_files(paths: &[impl AsRef<Path>]) -> Result<Self, ManifestError> {
        let mut all = Manifests::default();
        for path in paths {
            let path = path.as_ref();
            let text = std::fs::read_to_string(path)
                .map_err(|e| ManifestError(format!("cannot read {}: {e}", path.display())))?;
            let one = Self::parse(&text, &path.display().to_string())?;
            all.client_credentials.extend(one.client_credentials);
            all.secrets.extend(one.secrets);
        }
        Ok(all)
    }

    /// Parses one (multi-document) YAML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ManifestError> {
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(text).map_err(|e| ManifestError(format!("{origin}: not valid YAML: {e}")))?;
        let mut out = Manifests::default();
        for (i, doc) in docs.into_iter().enumerate() {
            if doc.is_null() {
                continue;
            }
            let where_ = format!("{origin}, document {}", i + 1);
            let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
            let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_owned();
            match (api_version.as_str(), kind.as_str()) {
                ("tokensync.io/v1alpha1", "ClientCredential") => {
                    let cc = serde_json::from_value(doc)
                        .map_err(|e| ManifestError(format!("{where_}: invalid ClientCredential: {e}")))?;
                    out.client_credentials.push(cc);
                }
                ("v1", "Secret") => {
                    let mut secret: Secret = serde_json::from_value(doc)
                        .map_err(|e| ManifestError(format!("{where_}: invalid Secret: {e}")))?;
                    fold_string_data(&mut secret);
                    out.secrets.push(secret);
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// The Secret named `name` in `namespace` (a missing namespace means `default`).
    pub fn secret(&self, namespace: &str, name: &str) -> Option<&Secret> {
        self.secrets.iter().find(|s| {
            s.metadata.name.as_deref() == Some(name)
                && s.metadata.namespace.as_deref().unwrap_or("default") == namespace
        })
    }
}

/// Merges stringData into data the way the API server does on write (stringData wins).
fn fold_string_data(secret: &mut Secret) {
    if let Some(string_data) = secret.string_data.take() {
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        for (k, v) in string_data {
            data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
        }
    }
}
