//! One task per credential: the controller's reconcile pipeline with files instead of
//! Secrets. Each pass: decide ([`crate::schedule::decide`]) -> acquire (at most one token
//! request) -> state file -> token files. Then sleep until the next decision point, a new
//! configuration, or shutdown. A pass in progress is never interrupted, so a rotated
//! refresh token the server has already handed out is always persisted.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;

use super::files::{self, Layout};
use super::live::{LiveTokens, ServedToken, Slot, Trouble};
use super::proxy::credential_header;
use super::sources::LoadedCredential;
use super::state_file::{self, AgentState};
use crate::controller::labels::RENEW_REQUESTED_AT;
use crate::metrics::{CredentialLabels, Metrics};
use crate::oauth::{TokenClient, TokenError};
use crate::schedule::{BackoffPolicy, Decision, RenewalPolicy, RequestReason};
use crate::token_state::{self, Prepared, Schedule, StoredToken};

/// How soon a failed state or token file write is retried.
const WRITE_RETRY: Duration = Duration::from_secs(5);

/// Counters of what the agent did, observable as a stream (tests wait on it instead of
/// sleeping; the same numbers are in /metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Completed passes over a credential.
    pub passes: u64,
    /// Tokens issued and persisted.
    pub issued: u64,
    /// Failed token requests.
    pub failures: u64,
    /// Configuration loads that succeeded (the initial one included).
    pub reloads: u64,
    /// Configuration loads that failed (the previous configuration was kept).
    pub reload_failures: u64,
}

/// What every worker shares.
pub struct Shared {
    pub engine: TokenClient,
    pub renewal: RenewalPolicy,
    pub backoff: BackoffPolicy,
    pub metrics: Arc<Metrics>,
    pub out_dir: PathBuf,
    pub state_dir: PathBuf,
    pub progress: tokio::sync::watch::Sender<Progress>,
    /// Per credential: whether a valid token is on disk.
    pub health: Mutex<HashMap<String, bool>>,
    /// True once the configuration loaded and every credential has a valid token on disk.
    pub ready: Arc<AtomicBool>,
    /// The projected ServiceAccount token file of credentials with spec.serviceAccountRef.
    pub service_account_token_file: Option<PathBuf>,
    /// Each credential's token in memory, for `--proxy`.
    pub live: Arc<LiveTokens>,
}

impl Shared {
    /// The ServiceAccount token for one request of `prep`, read from the projected file
    /// now (kubelet rotates it), or None when the credential uses none.
    fn federated_token(&self, prep: &Prepared) -> Result<Option<secrecy::SecretString>, TokenError> {
        if prep.service_account.is_none() {
            return Ok(None);
        }
        let path = self.service_account_token_file.as_ref().ok_or_else(|| {
            TokenError::credentials(
                "spec.serviceAccountRef: give the agent the projected ServiceAccount token with \
                 --service-account-token-file",
            )
        })?;
        super::read_token_file(path).map(Some).map_err(TokenError::credentials)
    }
}

impl Shared {
    pub fn set_health(&self, id: &str, healthy: Option<bool>) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        match healthy {
            Some(h) => health.insert(id.to_owned(), h),
            None => health.remove(id),
        };
        self.ready.store(!health.is_empty() && health.values().all(|h| *h), Ordering::Release);
    }
}

/// Runs one credential until its configuration sender is dropped (removed from the
/// configuration) or `stop` turns true (shutdown). A proxy whose upstream rejected the token
/// wakes it for an extra pass that renews at once ([`Slot::request_early_renewal`]).
pub async fn run(
    shared: Arc<Shared>,
    mut config: tokio::sync::watch::Receiver<Arc<LoadedCredential>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let first = config.borrow_and_update().clone();
    let layout = Layout::new(&shared.out_dir, &shared.state_dir, &first.namespace, &first.name);
    let id = first.id();
    let slot = shared.live.slot(&id);
    let mut worker = Worker {
        shared: shared.clone(),
        layout: layout.clone(),
        state: state_file::read(&layout.state_file),
        dirty: false,
        slot: slot.clone(),
        last_failure: None,
    };
    let mut early = false;
    loop {
        let cred = config.borrow_and_update().clone();
        let wake = worker.pass(&cred, early).await;
        early = false;
        let millis = (wake.as_millisecond() - Timestamp::now().as_millisecond()).clamp(0, 86_400_000);
        let delay = Duration::from_millis(millis as u64);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            changed = config.changed() => if changed.is_err() { break },
            _ = slot.early_renewal_requested() => early = true,
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    slot.withdraw();
    shared.set_health(&id, None);
    shared.metrics.forget_credential(&first.namespace, &first.name);
}

struct Worker {
    shared: Arc<Shared>,
    layout: Layout,
    /// The state as last written (or to be written, when `dirty`).
    state: AgentState,
    /// The last state write failed; publishing waits until it succeeds.
    dirty: bool,
    /// Where the proxy reads the token.
    slot: Arc<Slot>,
    /// Why the last token request failed, until one succeeds (for the proxy's 503).
    last_failure: Option<Trouble>,
}

impl Worker {
    /// One pass; returns when to run the next one. `early`: a proxy's upstream rejected the
    /// token being served, so a token is requested now (like a manual renewal, bypassing
    /// backoff; the proxy rate-limits these).
    async fn pass(&mut self, cred: &LoadedCredential, early: bool) -> Timestamp {
        let metrics = self.shared.metrics.clone();
        let _timer = metrics.reconcile_started();
        let (ns, name) = (cred.namespace.as_str(), cred.name.as_str());
        let spec = &cred.cc.spec;
        let schedule = Schedule::new(spec, &self.shared.renewal, &self.shared.backoff, cred.id());
        let annotation = cred.cc.metadata.annotations.as_ref().and_then(|a| a.get(RENEW_REQUESTED_AT)).cloned();
        let now = Timestamp::now();

        // Failures that are over (a success whose record was not written, or inputs no longer
        // in use) are cleared, and the state file says so.
        let current = cred.prepared.as_ref().ok().map(|p| p.attempt_inputs.as_str());
        let pending = self.state.failures.clone().still_pending(self.state.token.as_ref(), current);
        if pending != self.state.failures {
            tracing::info!(namespace = ns, name, "the recorded failures belong to inputs no longer in use; cleared");
            self.state.failures = pending;
            self.dirty = true;
            // Written now, so that a request that is due (an expired token) is made in this
            // very pass: the decision below waits for a clean state file.
            self.write_state(ns, name);
        }

        // decide, acquire
        match &cred.prepared {
            Err(problem) => {
                tracing::warn!(namespace = ns, name, reason = problem.reason, message = %problem.message, "cannot request a token");
            }
            Ok(prep) if !self.dirty => {
                let requested = token_state::renewal_requested(
                    annotation.as_deref(),
                    self.state.handled_renewal_request.as_deref(),
                    self.state.token.as_ref(),
                );
                if let Decision::RequestNow(reason) =
                    schedule.decide(now, self.state.token.as_ref(), prep, &self.state.failures, requested || early)
                {
                    // Only the annotation's request is recorded as handled; an early renewal
                    // for the proxy leaves the annotation bookkeeping alone.
                    let manual = reason == RequestReason::ManualRenewal && requested;
                    let why = if reason == RequestReason::ManualRenewal && !requested {
                        "an upstream of --proxy rejected the token (401 invalid_token)"
                    } else {
                        token_state::describe(reason)
                    };
                    if manual {
                        self.state.handled_renewal_request = annotation.clone();
                    }
                    let renewal_request = if manual { annotation.clone() } else { None };
                    let result = match self.shared.federated_token(prep) {
                        Ok(federated) => {
                            token_state::request(
                                &self.shared.engine,
                                &self.shared.metrics,
                                prep,
                                self.state.token.as_ref(),
                                renewal_request,
                                federated,
                            )
                            .await
                        }
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok((stored, rotated, flow)) => {
                            tracing::info!(namespace = ns, name, ?flow, reason = why, expires_at = %stored.expires_at, "token issued");
                            if rotated {
                                tracing::info!(
                                    namespace = ns,
                                    name,
                                    "the bootstrap refresh token was exchanged; the agent now keeps the rotated refresh token in its state file"
                                );
                            }
                            self.state.token = Some(stored);
                            self.state.failures = Default::default();
                            self.last_failure = None;
                            self.shared.progress.send_modify(|p| p.issued += 1);
                        }
                        Err(e) => {
                            self.state.failures = std::mem::take(&mut self.state.failures).failed(
                                now,
                                &e,
                                &prep.attempt_inputs,
                                self.shared.backoff.max,
                            );
                            tracing::warn!(namespace = ns, name, reason = e.kind.reason(), attempts = self.state.failures.attempts, error = %e, "token request failed");
                            self.last_failure =
                                Some(Trouble { reason: e.kind.reason().to_owned(), message: e.to_string() });
                            self.shared.progress.send_modify(|p| p.failures += 1);
                        }
                    }
                    // The state first: it may hold a rotated refresh token that exists
                    // nowhere else.
                    self.dirty = true;
                }
            }
            Ok(_) => {}
        }
        self.write_state(ns, name);

        // publish the token files from the stored token: also restores deleted or edited
        // files without a token request. A failure never removes a valid token.
        let now = Timestamp::now();
        let mut healthy = false;
        let mut retry_soon = self.dirty;
        if let Some(stored) = self.state.token.clone().filter(|t| t.is_valid_at(now) && !self.dirty) {
            match self.publish(spec.target.template.as_ref(), &stored) {
                Ok(()) => healthy = true,
                Err(e) => {
                    tracing::error!(namespace = ns, name, dir = %self.layout.token_dir.display(), error = %e, "cannot write the token files");
                    retry_soon = true;
                }
            }
        } else if self.state.token.as_ref().is_some_and(|t| !t.is_valid_at(now)) {
            tracing::warn!(namespace = ns, name, "the token on disk has expired");
        }
        self.shared.set_health(&cred.id(), Some(healthy));

        // when to look again
        let next = cred
            .prepared
            .as_ref()
            .ok()
            .map(|prep| schedule.decide(now, self.state.token.as_ref(), prep, &self.state.failures, false));
        let renew_at = schedule.renew_at(next.as_ref());
        self.record_gauges(ns, name, renew_at);
        let mut wake = vec![now + Duration::from_secs(86_400)];
        wake.extend(next.as_ref().and_then(|d| d.look_again_at(now)));
        wake.extend(self.state.token.as_ref().map(|t| t.expires_at).filter(|e| *e > now));
        if retry_soon {
            wake.push(now + WRITE_RETRY);
        }
        // Never sooner than a second from now: no tight loop, whatever the inputs.
        let wake = wake.into_iter().min().unwrap_or(now).max(now + Duration::from_secs(1));
        self.serve_in_memory(cred, wake);
        self.shared.progress.send_modify(|p| p.passes += 1);
        wake
    }

    /// Gives the proxy the stored token once its state is persisted (an expired one too:
    /// the proxy checks the expiry per request and never forwards it, but can then say it
    /// expired), and the reason no (new) token could be had, if any.
    fn serve_in_memory(&mut self, cred: &LoadedCredential, wake: Timestamp) {
        let spec = &cred.cc.spec;
        let mut trouble = match &cred.prepared {
            Err(problem) => Some(Trouble { reason: problem.reason.to_owned(), message: problem.message.clone() }),
            Ok(_) if spec.suspend => Some(Trouble {
                reason: "Suspended".into(),
                message: "spec.suspend is true: no token is requested".into(),
            }),
            Ok(_) => self.last_failure.clone(),
        };
        // An expired token is handed over too: the proxy never forwards it, but can say that
        // the token expired rather than that there never was one.
        let stored = self.state.token.as_ref().filter(|_| !self.dirty);
        let token = stored.and_then(|stored| match credential_header::for_token(spec.target.template.as_ref(), stored) {
            Ok((header, value)) => Some(ServedToken::new(header, value, stored.expires_at)),
            Err(message) => {
                tracing::error!(namespace = %cred.namespace, name = %cred.name, error = %message, "the proxy cannot use the token");
                trouble = Some(Trouble { reason: "InvalidSpec".into(), message: format!("spec.target.template: {message}") });
                None
            }
        });
        self.slot.publish(token, trouble, Some(wake));
    }

    /// Writes the token files; records the published keys in the state file.
    /// Writes the state file when it changed; on failure it stays dirty and is retried.
    fn write_state(&mut self, ns: &str, name: &str) {
        if !self.dirty {
            return;
        }
        match state_file::write(&self.layout.state_file, &self.state) {
            Ok(()) => self.dirty = false,
            Err(e) => {
                tracing::error!(namespace = ns, name, path = %self.layout.state_file.display(), error = %e, "cannot write the state file; retrying before publishing");
            }
        }
    }

    fn publish(&mut self, templates: Option<&BTreeMap<String, String>>, stored: &StoredToken) -> std::io::Result<()> {
        let data = token_state::render_target(templates, stored).map_err(std::io::Error::other)?;
        files::publish(&self.layout.token_dir, &data, &self.state.published_keys)?;
        let keys: Vec<String> = data.into_keys().collect();
        if keys != self.state.published_keys {
            self.state.published_keys = keys;
            state_file::write(&self.layout.state_file, &self.state)?;
        }
        Ok(())
    }

    fn record_gauges(&self, namespace: &str, name: &str, renew_at: Option<Timestamp>) {
        let labels = CredentialLabels { namespace: namespace.into(), name: name.into() };
        if let Some(t) = &self.state.token {
            self.shared.metrics.token_expiry.get_or_create(&labels).set(t.expires_at.as_second());
        }
        if let Some(r) = renew_at {
            self.shared.metrics.token_renewal.get_or_create(&labels).set(r.as_second());
        }
    }
}
