//! `tokensync status` and `tokensync renew`: the operator's view of one credential and a
//! nudge to renew it, like `cmctl status` / `cmctl renew` for cert-manager. Installed as
//! `kubectl-tokensync` they are a kubectl plugin (`kubectl tokensync status NAME`).
//!
//! They run as the USER, with the user's kubeconfig, not as the controller: the RBAC they
//! need is the user's (docs/runbook.md, "Permissions of the CLI";
//! deploy/cli/tokensync-cli-clusterrole.yaml), and every refusal names the missing
//! permission. Nothing here ever prints a token: the state Secret is read only to decode
//! the non-secret claims of a JWT access token, which stays in a `SecretString`.

pub mod renew;
pub mod status;

use std::path::PathBuf;

use clap::Args;
use jiff::Timestamp;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The kubectl connection flags, with kubectl's names and meanings.
#[derive(Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then the
    /// in-cluster service account).
    #[arg(long, value_name = "FILE", env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use.
    #[arg(long)]
    pub context: Option<String>,

    /// The kubeconfig cluster to use.
    #[arg(long)]
    pub cluster: Option<String>,

    /// The kubeconfig user to use.
    #[arg(long)]
    pub user: Option<String>,

    /// The namespace of a ClientCredential (default: the context's namespace, else
    /// "default"). Ignored for a ClusterClientCredential.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// Which resource a command is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ClientCredential,
    ClusterClientCredential,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ClientCredential => "ClientCredential",
            Kind::ClusterClientCredential => "ClusterClientCredential",
        }
    }

    /// The resource name RBAC rules use.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::ClientCredential => "clientcredentials.tokensync.io",
            Kind::ClusterClientCredential => "clusterclientcredentials.tokensync.io",
        }
    }
}

/// Parses `NAME` or `TYPE/NAME` as kubectl does, TYPE being the kind, its plural or its
/// short name, optionally with the group (`clusterclientcredentials.tokensync.io/x`).
pub fn parse_object(arg: &str) -> Result<(Kind, String), OpsError> {
    let Some((kind, name)) = arg.split_once('/') else {
        return Ok((Kind::ClientCredential, arg.to_owned()));
    };
    let kind = kind.to_ascii_lowercase();
    let kind = kind.strip_suffix(".tokensync.io").unwrap_or(&kind);
    let kind = match kind {
        "clientcredential" | "clientcredentials" | "clientcred" => Kind::ClientCredential,
        "clusterclientcredential" | "clusterclientcredentials" | "clusterclientcred" => Kind::ClusterClientCredential,
        other => {
            return Err(OpsError::Usage(format!(
                "unknown type {other:?}: use clientcredential/NAME or clusterclientcredential/NAME"
            )));
        }
    };
    if name.is_empty() {
        return Err(OpsError::Usage(format!("{arg}: missing the name after the /")));
    }
    Ok((kind, name.to_owned()))
}

/// Why a command failed. The exit code tells a script what happened: 1 the renewal
/// failed or did not finish in time, 2 the command could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{0}")]
    Usage(String),
    #[error("no Kubernetes configuration: {0}")]
    NoConfig(String),
    #[error("cannot reach the Kubernetes API server at {url}: {message}")]
    NoCluster { url: String, message: String },
    #[error(
        "the {kind} CRD is not installed in this cluster (the server does not serve {plural}); install it with `tokensync crd | kubectl apply --server-side -f -`"
    )]
    NoCrd { kind: &'static str, plural: &'static str },
    #[error("{kind} {name:?} not found{}", in_namespace(namespace))]
    NotFound { kind: &'static str, name: String, namespace: Option<String> },
    #[error(
        "forbidden: you may not {verb} {resource}{}; ask for the RBAC permission `{verb}` on `{resource}` (docs/runbook.md#permissions-of-the-cli). The server said: {message}",
        in_namespace(namespace)
    )]
    Forbidden { verb: &'static str, resource: &'static str, namespace: Option<String>, message: String },
    #[error("unauthorized: the API server refused the credentials of your kubeconfig ({0})")]
    Unauthorized(String),
    #[error("{verb} {resource}: {message}")]
    Api { verb: &'static str, resource: &'static str, message: String },
    #[error("{0}")]
    RenewalFailed(String),
    #[error("{0}")]
    Timeout(String),
}

fn in_namespace(namespace: &Option<String>) -> String {
    namespace.as_ref().map(|n| format!(" in namespace {n:?}")).unwrap_or_default()
}

impl OpsError {
    pub fn exit_code(&self) -> u8 {
        match self {
            OpsError::RenewalFailed(_) | OpsError::Timeout(_) => 1,
            _ => 2,
        }
    }
}

/// A connected client and where it points.
pub struct Connection {
    pub client: Client,
    /// The namespace for namespaced commands: -n, else the context's.
    pub namespace: String,
    pub url: String,
}

/// Builds a client the way kubectl does: --kubeconfig (or $KUBECONFIG, ~/.kube/config)
/// with --context/--cluster/--user, the in-cluster service account when there is no
/// kubeconfig at all.
pub async fn connect(args: &KubeArgs) -> Result<Connection, OpsError> {
    let options =
        KubeConfigOptions { context: args.context.clone(), cluster: args.cluster.clone(), user: args.user.clone() };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| OpsError::NoConfig(format!("cannot read {}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await.map_err(|e| OpsError::NoConfig(e.to_string()))?
        }
        None if options.context.is_some() || options.cluster.is_some() || options.user.is_some() => {
            Config::from_kubeconfig(&options).await.map_err(|e| OpsError::NoConfig(e.to_string()))?
        }
        None => Config::infer().await.map_err(|e| OpsError::NoConfig(e.to_string()))?,
    };
    let namespace = args.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| OpsError::NoConfig(e.to_string()))?;
    Ok(Connection { client, namespace, url })
}

/// What a failed API call means to the user. `verb` and `resource` name the call (the
/// RBAC permission it needs); 404s are the caller's to explain, except a missing route,
/// which means the CRD is not installed.
pub(crate) fn api_error(
    conn: &Connection,
    error: kube::Error,
    verb: &'static str,
    resource: &'static str,
    namespace: Option<&str>,
) -> OpsError {
    match error {
        kube::Error::Api(status) => match status.code {
            403 => OpsError::Forbidden {
                verb,
                resource,
                namespace: namespace.map(str::to_owned),
                message: status.message.clone(),
            },
            401 => OpsError::Unauthorized(status.message.clone()),
            _ => OpsError::Api { verb, resource, message: format!("{} ({})", status.message, status.code) },
        },
        other => OpsError::NoCluster { url: conn.url.clone(), message: other.to_string() },
    }
}

/// A 404 about a named object (the object does not exist) rather than about the route
/// (the resource is not served: its CRD is not installed).
pub(crate) fn is_missing_object(error: &kube::Error) -> Option<bool> {
    match error {
        kube::Error::Api(status) if status.code == 404 => {
            Some(status.details.as_ref().is_some_and(|d| !d.name.is_empty()))
        }
        _ => None,
    }
}

/// "3m ago", "in 1h2m", "now": a duration people read at a glance.
pub fn relative(t: Timestamp, now: Timestamp) -> String {
    let seconds = t.as_second() - now.as_second();
    if seconds == 0 {
        return "now".into();
    }
    let text = short_duration(seconds.unsigned_abs());
    if seconds > 0 { format!("in {text}") } else { format!("{text} ago") }
}

/// The two largest units of a duration: 45s, 3m10s, 2h5m, 4d3h.
pub fn short_duration(seconds: u64) -> String {
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut parts = Vec::new();
    let mut rest = seconds;
    for (size, unit) in units {
        if rest >= size || (parts.is_empty() && size == 1) {
            parts.push(format!("{}{unit}", rest / size));
            rest %= size;
        } else if !parts.is_empty() {
            break;
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.concat()
}

/// An absolute time and how far it is from now: `2026-11-22T10:05:00Z (in 57m)`.
pub fn when(t: Timestamp, now: Timestamp) -> String {
    format!("{} ({})", crate::token_state::seconds(t), relative(t, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_named_like_kubectl_names_them() {
        assert_eq!(parse_object("demo").unwrap(), (Kind::ClientCredential, "demo".into()));
        assert_eq!(parse_object("clientcred/demo").unwrap(), (Kind::ClientCredential, "demo".into()));
        assert_eq!(
            parse_object("ClusterClientCredentials.tokensync.io/x").unwrap(),
            (Kind::ClusterClientCredential, "x".into())
        );
        assert!(parse_object("secret/x").is_err());
        assert!(parse_object("clientcred/").is_err());
    }

    #[test]
    fn durations_read_at_a_glance() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(relative(now, now), "now");
        assert_eq!(relative("2026-01-01T00:00:45Z".parse().unwrap(), now), "in 45s");
        assert_eq!(relative("2025-12-31T23:56:50Z".parse().unwrap(), now), "3m10s ago");
        assert_eq!(relative("2026-01-01T02:05:00Z".parse().unwrap(), now), "in 2h5m");
        assert_eq!(relative("2026-01-05T03:00:00Z".parse().unwrap(), now), "in 4d3h");
        assert_eq!(short_duration(3600), "1h");
    }
}
