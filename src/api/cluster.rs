//! `ClusterClientCredential` (tokensync.io/v1alpha1): one token, many namespaces.
//!
//! A platform team keeps the client secret in its own namespace; tokensync requests one token
//! per renewal and writes it to the target Secret in every selected namespace. The spec is a
//! ClientCredential's spec (the same type, as cert-manager's ClusterIssuer shares Issuer's),
//! where `credentialsRef.namespace` and the `target` namespace selection are required instead
//! of forbidden. The CRD is the ClientCredential CRD with those admission rules swapped
//! ([`crd`]), so the two kinds can never drift apart.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::v1alpha1::{
    ClientCredentialSpec, ClientCredentialStatus, NAMESPACED_CREDENTIALS_RULE, NAMESPACED_SERVICE_ACCOUNT_RULE,
    NAMESPACED_TARGET_RULE,
};

/// Desired state of a ClusterClientCredential: the token request of a ClientCredential, made
/// with the credentials Secret in spec.credentialsRef.namespace, and the namespaces that
/// receive the target Secret.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tokensync.io",
    version = "v1alpha1",
    kind = "ClusterClientCredential",
    plural = "clusterclientcredentials",
    shortname = "clusterclientcred",
    category = "tokensync",
    status = "ClusterClientCredentialStatus",
    derive = "PartialEq",
    doc = "Keeps one short-lived OAuth2 access token fresh in a Secret in every selected namespace. The client secret stays in the platform team's namespace; one token request per renewal, however many namespaces receive it.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Synced","type":"integer","jsonPath":".status.syncedNamespaces"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.failedNamespaces"}"#,
    // kubectl prints a date column as an age, and a time in the future as `<invalid>`:
    // expiry is a string column (the RFC 3339 time); only past times are date columns.
    printcolumn = r#"{"name":"Expires","type":"string","description":"When the published token expires (RFC 3339).","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"Refreshed","type":"date","description":"How long ago the published token was issued.","jsonPath":".status.lastRefreshTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct ClusterClientCredentialSpec {
    /// The fields of a ClientCredential's spec.
    #[serde(flatten)]
    pub token: ClientCredentialSpec,
}

/// Observed state of a ClusterClientCredential: a ClientCredential's status plus how the
/// fan-out to the selected namespaces went.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterClientCredentialStatus {
    #[serde(flatten)]
    pub credential: ClientCredentialStatus,

    /// How many namespaces spec.target selects (existing, not terminating).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_namespaces: Option<i32>,

    /// How many selected namespaces hold the current token in their target Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_namespaces: Option<i32>,

    /// How many selected namespaces could not be given the current token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_namespaces: Option<i32>,

    /// The first failing namespaces (at most 20, by name) and why each failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["namespace"]))]
    pub namespace_failures: Vec<NamespaceFailure>,
}

/// One namespace that did not receive the token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct NamespaceFailure {
    /// The namespace.
    pub namespace: String,
    /// Why its target Secret could not be written.
    pub message: String,
}

/// The most namespaces [`ClusterClientCredentialStatus::namespace_failures`] names.
pub const MAX_NAMESPACE_FAILURES: usize = 20;

/// Where the generated CRD is committed, relative to the repository root.
pub const CRD_PATH: &str = "crds/clusterclientcredentials.tokensync.io.yaml";

/// The admission rules a ClusterClientCredential's spec adds to the shared ones, in place of
/// the rules that keep a ClientCredential in its namespace.
pub const CLUSTER_RULES: &[(&str, &str, &str)] = &[
    (
        "!has(self.credentialsRef) || has(self.credentialsRef.namespace)",
        "a ClusterClientCredential names the namespace of its credentials Secret in spec.credentialsRef.namespace",
        ".credentialsRef.namespace",
    ),
    (
        "!has(self.serviceAccountRef) || has(self.serviceAccountRef.namespace)",
        "a ClusterClientCredential names the namespace of its ServiceAccount in spec.serviceAccountRef.namespace",
        ".serviceAccountRef.namespace",
    ),
    (
        "!has(self.clientAuthentication) || !(self.clientAuthentication in ['tls_client_auth', 'self_signed_tls_client_auth']) || has(self.credentialsRef)",
        "a ClusterClientCredential reads its client certificate Secret from spec.credentialsRef.namespace: set spec.credentialsRef",
        ".credentialsRef",
    ),
    (
        "!has(self.target.certificateSecretNameKey)",
        "spec.target.certificateSecretNameKey is only for a ClientCredential: the client certificate Secret of a ClusterClientCredential is in another namespace than its copies",
        ".target.certificateSecretNameKey",
    ),
    (
        "has(self.target.namespaces) || has(self.target.namespaceSelector)",
        "select the namespaces that receive the token: spec.target.namespaces and/or spec.target.namespaceSelector",
        ".target",
    ),
];

/// The ClusterClientCredential CRD: its names, scope and status schema from the derive, and
/// the spec schema of the ClientCredential CRD with the namespace rules swapped.
pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut value = serde_json::to_value(ClusterClientCredential::crd()).expect("the CRD serializes");
    let namespaced = serde_json::to_value(super::crd()).expect("the CRD serializes");
    let schema_path = "/spec/versions/0/schema/openAPIV3Schema/properties/spec";
    let mut spec = namespaced.pointer(schema_path).cloned().expect("the ClientCredential CRD has a spec schema");
    if let Some(Value::Array(rules)) = spec.get_mut("x-kubernetes-validations") {
        rules.retain(|r| {
            let rule = r.get("rule").and_then(Value::as_str);
            rule != Some(NAMESPACED_CREDENTIALS_RULE)
                && rule != Some(NAMESPACED_SERVICE_ACCOUNT_RULE)
                && rule != Some(NAMESPACED_TARGET_RULE)
        });
        for (rule, message, field_path) in CLUSTER_RULES {
            rules.push(json!({"rule": rule, "message": message, "fieldPath": field_path}));
        }
    }
    spec["description"] = json!(
        "Desired state of a ClusterClientCredential: the token request of a ClientCredential, made with the credentials Secret in spec.credentialsRef.namespace, and the namespaces that receive the target Secret (spec.target.namespaces, namespaceSelector, excludeNamespaces)."
    );
    *value.pointer_mut(schema_path).expect("the derived CRD has a spec schema") = spec;
    super::strip_nullable(&mut value);
    serde_json::from_value(value).expect("the CRD deserializes")
}

/// The CRD as YAML, exactly as committed in [`CRD_PATH`].
pub fn crd_yaml() -> String {
    super::yaml_with_header(&crd(), CRD_PATH)
}

/// Whether a namespace receives the token: listed or matched by the selector, and not
/// excluded. `labels` are the namespace's labels.
pub fn selects(
    target: &super::TargetSecret,
    namespace: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    if target.exclude_namespaces.iter().any(|n| n == namespace) {
        return false;
    }
    let listed = target.namespaces.iter().any(|n| n == namespace);
    let matched = target.namespace_selector.as_ref().is_some_and(|s| selector_matches(s, labels));
    listed || matched
}

fn selector_matches(selector: &LabelSelector, labels: &std::collections::BTreeMap<String, String>) -> bool {
    use kube::core::SelectorExt;
    // An invalid selector (refused by validation) selects nothing rather than everything.
    kube::core::Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn target(value: Value) -> super::super::TargetSecret {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn namespaces_are_selected_by_name_or_labels_and_exclusion_wins() {
        let t = target(json!({
            "namespaces": ["listed"],
            "namespaceSelector": {"matchLabels": {"tokensync.io/auth0": "true"}},
            "excludeNamespaces": ["kube-system"]
        }));
        let labelled = BTreeMap::from([("tokensync.io/auth0".to_owned(), "true".to_owned())]);
        assert!(selects(&t, "listed", &BTreeMap::new()));
        assert!(selects(&t, "team-a", &labelled));
        assert!(!selects(&t, "team-b", &BTreeMap::new()));
        assert!(!selects(&t, "kube-system", &labelled));
        let expressions = target(
            json!({"namespaceSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["prod"]}]}}),
        );
        assert!(selects(&expressions, "x", &BTreeMap::from([("tier".to_owned(), "prod".to_owned())])));
        assert!(!selects(&expressions, "x", &BTreeMap::from([("tier".to_owned(), "dev".to_owned())])));
    }

    #[test]
    fn the_cluster_crd_swaps_the_namespace_rules_and_keeps_the_others() {
        let value = serde_json::to_value(crd()).unwrap();
        assert_eq!(value["spec"]["scope"], "Cluster");
        let rules: Vec<String> = value
            .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/x-kubernetes-validations")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule"].as_str().unwrap().to_owned())
            .collect();
        assert!(!rules.iter().any(|r| r == NAMESPACED_CREDENTIALS_RULE || r == NAMESPACED_TARGET_RULE));
        assert!(CLUSTER_RULES.iter().all(|(rule, _, _)| rules.iter().any(|r| r == rule)));
        assert!(rules.iter().any(|r| r.starts_with("has(self.tokenEndpoint) != has(self.issuer)")));
        let status = value.pointer("/spec/versions/0/schema/openAPIV3Schema/properties/status/properties").unwrap();
        assert!(status.get("conditions").is_some() && status.get("syncedNamespaces").is_some());
    }
}
