//! `tokensync renew`: requests an immediate renewal through the
//! `tokensync.io/renew-requested-at` annotation (an RFC 3339 time, as `cmctl renew` uses a
//! time), and with `--wait` waits until the controller has handled that very request.
//!
//! The controller acts on a new annotation value once, bypassing backoff, and records the
//! value it handled in status.handledRenewalRequest together with the Ready and Degraded
//! conditions of the attempt: that is what `--wait` watches for, so it never mistakes an
//! earlier renewal for the one it asked for.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::wait::await_condition;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{Connection, Kind, KubeArgs, OpsError, api_error, is_missing_object};
use crate::api::{ClientCredential, ClientCredentialSpec, ClientCredentialStatus, ClusterClientCredential};
use crate::controller::labels::RENEW_REQUESTED_AT;
use crate::controller::status::{DEGRADED, READY};

/// Arguments of `tokensync renew`.
#[derive(Args, Debug, Clone)]
pub struct RenewArgs {
    /// Credentials to renew: NAME or TYPE/NAME (clusterclientcredential/NAME). With --all
    /// or --selector, optionally one TYPE (clientcredentials, the default, or
    /// clusterclientcredentials).
    pub objects: Vec<String>,

    /// Renew every credential (in the namespace, or with -A in all namespaces).
    #[arg(long)]
    pub all: bool,

    /// Renew the credentials matching this label selector, e.g. `team=payments`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,

    /// With --all or --selector: in all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,

    /// Wait until the controller has handled each request; exit code 1 if a renewal
    /// failed or did not finish within --timeout.
    #[arg(long)]
    pub wait: bool,

    /// How long --wait waits, e.g. 90s, 5m.
    #[arg(long, default_value = "2m", value_parser = crate::api::duration::parse_duration)]
    pub timeout: Duration,

    #[command(flatten)]
    pub kube: KubeArgs,
}

/// One credential to renew.
#[derive(Debug, Clone)]
struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: String,
    suspended: bool,
}

impl Target {
    fn display(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind.as_str(), self.name),
            None => format!("{} {}", self.kind.as_str(), self.name),
        }
    }
}

/// Runs `renew`, printing what it does to `out` as it goes.
pub async fn run(args: &RenewArgs, out: &mut dyn Write) -> Result<(), OpsError> {
    let conn = super::connect(&args.kube).await?;
    renew(&conn, args, out).await
}

/// `renew` on a connection.
pub async fn renew(conn: &Connection, args: &RenewArgs, out: &mut dyn Write) -> Result<(), OpsError> {
    let targets = resolve(conn, args).await?;
    if targets.is_empty() {
        let _ = writeln!(out, "no credentials matched: nothing to renew");
        return Ok(());
    }
    // Sub-second precision: two requests within one second are still two new values.
    let value = Timestamp::now().to_string();
    for t in &targets {
        request(conn, t, &value).await?;
        let note = if t.suspended { " (suspended: it will not be renewed until spec.suspend is false)" } else { "" };
        let _ = writeln!(out, "renewal requested: {} ({RENEW_REQUESTED_AT}={value}){note}", t.display());
        let _ = out.flush();
    }
    if !args.wait {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut failed = Vec::new();
    for t in &targets {
        if t.suspended {
            let _ = writeln!(out, "not renewed: {} is suspended", t.display());
            failed.push(t.display());
            continue;
        }
        let handled = tokio::time::timeout_at(deadline, wait_handled(conn, t, &value)).await;
        let status = match handled {
            Err(_) => {
                let _ =
                    writeln!(out, "timed out: {} has not handled the request within {:?}", t.display(), args.timeout);
                return Err(OpsError::Timeout(format!(
                    "timed out after {:?} waiting for the controller to renew {}; is the controller running? (tokensync status {})",
                    args.timeout,
                    t.display(),
                    t.name
                )));
            }
            Ok(result) => result?,
        };
        let condition = |type_: &str| status.conditions.iter().find(|c| c.type_ == type_).cloned();
        match (condition(READY), condition(DEGRADED)) {
            (Some(ready), Some(degraded)) if ready.status == "True" && degraded.status == "False" => {
                let expires = status.expires_at.as_ref().map(|t| crate::token_state::seconds(t.0)).unwrap_or_default();
                let _ = writeln!(out, "renewed: {} (new token expires at {expires})", t.display());
            }
            (ready, degraded) => {
                let why = degraded
                    .filter(|d| d.status == "True")
                    .or(ready)
                    .map(|c| format!("{}: {}", c.reason, c.message))
                    .unwrap_or_else(|| "no conditions reported".into());
                let _ = writeln!(out, "renewal failed: {}: {why}", t.display());
                failed.push(t.display());
            }
        }
        let _ = out.flush();
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(OpsError::RenewalFailed(format!("renewal failed for {}", failed.join(", "))))
    }
}

/// The credentials the arguments name, each confirmed to exist.
async fn resolve(conn: &Connection, args: &RenewArgs) -> Result<Vec<Target>, OpsError> {
    if args.all || args.selector.is_some() {
        if args.all && args.selector.is_some() {
            return Err(OpsError::Usage("--all and --selector exclude each other".into()));
        }
        let kind = match args.objects.as_slice() {
            [] => Kind::ClientCredential,
            [one] => type_only(one)?,
            _ => return Err(OpsError::Usage("with --all or --selector, name at most one TYPE, no objects".into())),
        };
        let params = match &args.selector {
            Some(s) => ListParams::default().labels(s),
            None => ListParams::default(),
        };
        return match kind {
            Kind::ClientCredential => {
                let (api, ns): (Api<ClientCredential>, _) = if args.all_namespaces {
                    (Api::all(conn.client.clone()), None)
                } else {
                    (Api::namespaced(conn.client.clone(), &conn.namespace), Some(conn.namespace.as_str()))
                };
                let list = api.list(&params).await.map_err(|e| missing_crd(conn, e, kind, "list", ns))?;
                Ok(list.items.iter().map(|cc| target(kind, cc, &cc.spec)).collect())
            }
            Kind::ClusterClientCredential => {
                let api: Api<ClusterClientCredential> = Api::all(conn.client.clone());
                let list = api.list(&params).await.map_err(|e| missing_crd(conn, e, kind, "list", None))?;
                Ok(list.items.iter().map(|c| target(kind, c, &c.spec.token)).collect())
            }
        };
    }
    if args.all_namespaces {
        return Err(OpsError::Usage("-A/--all-namespaces goes with --all or --selector".into()));
    }
    if args.objects.is_empty() {
        return Err(OpsError::Usage("name the credentials to renew, or use --all or --selector".into()));
    }
    let mut targets = Vec::new();
    for object in &args.objects {
        let (kind, name) = super::parse_object(object)?;
        let not_found = |e: kube::Error, ns: Option<&str>| match is_missing_object(&e) {
            Some(true) => {
                OpsError::NotFound { kind: kind.as_str(), name: name.clone(), namespace: ns.map(str::to_owned) }
            }
            _ => missing_crd(conn, e, kind, "get", ns),
        };
        targets.push(match kind {
            Kind::ClientCredential => {
                let api: Api<ClientCredential> = Api::namespaced(conn.client.clone(), &conn.namespace);
                let cc = api.get(&name).await.map_err(|e| not_found(e, Some(&conn.namespace)))?;
                target(kind, &cc, &cc.spec)
            }
            Kind::ClusterClientCredential => {
                let api: Api<ClusterClientCredential> = Api::all(conn.client.clone());
                let ccc = api.get(&name).await.map_err(|e| not_found(e, None))?;
                target(kind, &ccc, &ccc.spec.token)
            }
        });
    }
    Ok(targets)
}

fn type_only(arg: &str) -> Result<Kind, OpsError> {
    super::parse_object(&format!("{arg}/x")).map(|(kind, _)| kind)
}

fn target<K: Resource>(kind: Kind, object: &K, spec: &ClientCredentialSpec) -> Target {
    Target { kind, namespace: object.namespace(), name: object.name_any(), suspended: spec.suspend }
}

fn missing_crd(conn: &Connection, e: kube::Error, kind: Kind, verb: &'static str, ns: Option<&str>) -> OpsError {
    match is_missing_object(&e) {
        Some(false) => OpsError::NoCrd { kind: kind.as_str(), plural: kind.plural() },
        _ => api_error(conn, e, verb, kind.plural(), ns),
    }
}

/// Sets the annotation with a JSON merge patch of metadata only: it touches nothing else
/// and needs only `patch` on the resource.
async fn request(conn: &Connection, t: &Target, value: &str) -> Result<(), OpsError> {
    let patch = json!({"metadata": {"annotations": {RENEW_REQUESTED_AT: value}}});
    let params = PatchParams::default();
    let result = match t.kind {
        Kind::ClientCredential => {
            let ns = t.namespace.as_deref().unwrap_or_default();
            let api: Api<ClientCredential> = Api::namespaced(conn.client.clone(), ns);
            api.patch(&t.name, &params, &Patch::Merge(&patch)).await.map(|_| ())
        }
        Kind::ClusterClientCredential => {
            let api: Api<ClusterClientCredential> = Api::all(conn.client.clone());
            api.patch(&t.name, &params, &Patch::Merge(&patch)).await.map(|_| ())
        }
    };
    result.map_err(|e| api_error(conn, e, "patch", t.kind.plural(), t.namespace.as_deref()))
}

/// Waits (a watch on the one object, no polling) until the status says the controller
/// handled `value`, and returns that status.
async fn wait_handled(conn: &Connection, t: &Target, value: &str) -> Result<ClientCredentialStatus, OpsError> {
    match t.kind {
        Kind::ClientCredential => {
            let ns = t.namespace.as_deref().unwrap_or_default();
            let api: Api<ClientCredential> = Api::namespaced(conn.client.clone(), ns);
            wait_on(api, t, value, |cc: &ClientCredential| cc.status.clone()).await
        }
        Kind::ClusterClientCredential => {
            let api: Api<ClusterClientCredential> = Api::all(conn.client.clone());
            wait_on(api, t, value, |c: &ClusterClientCredential| c.status.clone().map(|s| s.credential)).await
        }
    }
}

async fn wait_on<K>(
    api: Api<K>,
    t: &Target,
    value: &str,
    status: impl Fn(&K) -> Option<ClientCredentialStatus> + Clone + Send + 'static,
) -> Result<ClientCredentialStatus, OpsError>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug + Send + Sync + 'static,
{
    let wanted = value.to_owned();
    let read = status.clone();
    let handled = move |object: Option<&K>| {
        object.and_then(&read).is_some_and(|s| s.handled_renewal_request.as_deref() == Some(wanted.as_str()))
    };
    match await_condition(api, &t.name, handled).await {
        Ok(Some(object)) => Ok(status(&object).unwrap_or_default()),
        Ok(None) => Err(OpsError::RenewalFailed(format!("{} was deleted while waiting", t.display()))),
        Err(e) => Err(OpsError::Api { verb: "watch", resource: t.kind.plural(), message: e.to_string() }),
    }
    .map_err(|e| match e {
        OpsError::Api { message, .. } if message.contains("403") || message.contains("orbidden") => {
            OpsError::Forbidden {
                verb: "watch",
                resource: t.kind.plural(),
                namespace: t.namespace.clone(),
                message: format!("{message} (--wait watches the object: it needs list and watch)"),
            }
        }
        other => other,
    })
}
