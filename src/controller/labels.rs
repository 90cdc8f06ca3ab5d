//! The labels, annotations and names tokensync puts on the objects it manages. They are
//! API: users select on them, and the controller finds its own Secrets by them.

/// Label on every Secret tokensync manages; the controller only watches Secrets with it.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "tokensync";
/// Label naming the ClientCredential a managed Secret belongs to.
pub const CREDENTIAL: &str = "tokensync.io/client-credential";
/// Label naming the ClusterClientCredential a managed Secret belongs to: its state Secret
/// and the copy of its target in every selected namespace.
pub const CLUSTER_CREDENTIAL: &str = "tokensync.io/cluster-client-credential";
/// Label telling target Secrets (workloads read them) from state Secrets (tokensync only).
pub const ROLE: &str = "tokensync.io/role";
pub const ROLE_TARGET: &str = "target";
pub const ROLE_STATE: &str = "state";

/// Annotation on a ClientCredential: set it to a new value (e.g. the current time) to
/// request one immediate renewal.
pub const RENEW_REQUESTED_AT: &str = "tokensync.io/renew-requested-at";

/// Annotations tokensync writes on the Secrets it manages.
pub const ISSUED_AT: &str = "tokensync.io/issued-at";
pub const EXPIRES_AT: &str = "tokensync.io/expires-at";
pub const INPUTS: &str = "tokensync.io/inputs";
pub const BOOTSTRAP: &str = "tokensync.io/bootstrap";
pub const RENEWAL_REQUEST: &str = "tokensync.io/renewal-request";
/// The x5t#S256 thumbprint of the certificate the stored token is bound to (RFC 8705 3).
pub const BOUND_CERTIFICATE: &str = "tokensync.io/bound-certificate";

/// The field manager of every write tokensync makes.
pub const FIELD_MANAGER: &str = "tokensync";

/// The label selector for the Secrets tokensync manages.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY}={MANAGED_BY_VALUE}")
}

/// The label selector for the Secrets tokensync manages for ClientCredentials (those of
/// ClusterClientCredentials have their own watch).
pub fn namespaced_managed_selector() -> String {
    format!("{MANAGED_BY}={MANAGED_BY_VALUE},!{CLUSTER_CREDENTIAL}")
}

/// Name of the state Secret of a ClientCredential: the name plus a suffix, shortened with a
/// hash when that would exceed the 253 characters Kubernetes allows.
pub fn state_secret_name(credential: &str) -> String {
    suffixed(credential, ".tokensync-state")
}

/// Name of the state Secret of a ClusterClientCredential, in its credentials namespace: a
/// suffix of its own, so it never collides with a ClientCredential's of the same name.
pub fn cluster_state_secret_name(credential: &str) -> String {
    suffixed(credential, ".tokensync-cluster-state")
}

fn suffixed(credential: &str, suffix: &str) -> String {
    let name = format!("{credential}{suffix}");
    if name.len() <= 253 {
        return name;
    }
    use sha2::Digest;
    let hash = hex::encode(&sha2::Sha256::digest(credential.as_bytes())[..8]);
    let keep = 253 - suffix.len() - hash.len() - 1;
    format!("{}-{hash}{suffix}", credential[..keep].trim_end_matches(['-', '.']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_secret_names_are_valid_and_distinct_for_long_names() {
        assert_eq!(state_secret_name("chalk"), "chalk.tokensync-state");
        let a = state_secret_name(&"a".repeat(253));
        let b = state_secret_name(&format!("{}b", "a".repeat(252)));
        assert!(a.len() <= 253 && b.len() <= 253);
        assert_ne!(a, b);
    }
}
