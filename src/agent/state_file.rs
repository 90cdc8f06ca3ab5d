//! The agent's state file, `STATE_DIR/<namespace>/<name>.json` (0600): what the
//! controller keeps in its state Secret and in the ClientCredential's status. It holds the
//! raw token (so the token files can be restored without a request), the refresh token the
//! agent holds, the fingerprints of the inputs, the failure record (so backoff survives a
//! restart) and the keys published (so a key dropped from the template is removed).
//!
//! It is written BEFORE the token files, so a crash between the two never loses a rotated
//! refresh token. An unreadable state file is treated as no state: the agent requests a
//! new token and rewrites it.

use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::files;
use crate::token_state::{FailureRecord, StoredToken};

/// Version of the file format; files of other versions are ignored (no state).
const VERSION: u32 = 1;

/// What the agent remembers about one credential.
#[derive(Debug, Clone, Default)]
pub struct AgentState {
    pub token: Option<StoredToken>,
    pub failures: FailureRecord,
    /// The renew-requested-at annotation value last acted upon (success or failure).
    pub handled_renewal_request: Option<String>,
    /// The keys last published in the token directory.
    pub published_keys: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileFormat {
    version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<TokenFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failures: Option<FailuresFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    handled_renewal_request: Option<String>,
    #[serde(default)]
    published_keys: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenFormat {
    access_token: String,
    token_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    issued_at: Timestamp,
    expires_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    inputs: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bootstrap: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    renewal_request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bound_certificate: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FailuresFormat {
    attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_failure: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_after_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inputs: Option<String>,
}

/// Reads the state file. A missing file is no state; so is an unreadable one (with a
/// warning that names the file, never its content).
pub fn read(path: &Path) -> AgentState {
    let bytes = match files::read_optional(path) {
        Ok(Some(b)) => b,
        Ok(None) => return AgentState::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the state file; starting without state");
            return AgentState::default();
        }
    };
    // serde_json's messages quote at most a position and a type, not values; still, only
    // the category is logged.
    match serde_json::from_slice::<FileFormat>(&bytes) {
        Ok(f) if f.version == VERSION => from_format(f),
        Ok(f) => {
            tracing::warn!(path = %path.display(), version = f.version, "unknown state file version; ignoring it");
            AgentState::default()
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), category = ?e.classify(), "unreadable state file; ignoring it");
            AgentState::default()
        }
    }
}

/// Writes the state file atomically (0600, parent directory 0700).
pub fn write(path: &Path, state: &AgentState) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        files::ensure_private_dir(dir)?;
    }
    let bytes = serde_json::to_vec_pretty(&to_format(state)).map_err(std::io::Error::other)?;
    files::write_atomic(path, &bytes)
}

fn from_format(f: FileFormat) -> AgentState {
    AgentState {
        token: f.token.filter(|t| !t.access_token.is_empty()).map(|t| StoredToken {
            access_token: t.access_token.into(),
            token_type: t.token_type,
            scope: t.scope,
            issued_at: t.issued_at,
            expires_at: t.expires_at,
            refresh_token: t.refresh_token.filter(|r| !r.is_empty()).map(SecretString::from),
            inputs: t.inputs,
            bootstrap: t.bootstrap,
            renewal_request: t.renewal_request,
            bound_certificate: t.bound_certificate,
        }),
        failures: f
            .failures
            .map(|r| FailureRecord {
                attempts: r.attempts,
                last_failure: r.last_failure,
                retry_after: r.retry_after_seconds.map(Duration::from_secs),
                inputs: r.inputs,
            })
            .unwrap_or_default(),
        handled_renewal_request: f.handled_renewal_request,
        published_keys: f.published_keys,
    }
}

fn to_format(s: &AgentState) -> FileFormat {
    FileFormat {
        version: VERSION,
        token: s.token.as_ref().map(|t| TokenFormat {
            access_token: t.access_token.expose_secret().to_owned(),
            token_type: t.token_type.clone(),
            scope: t.scope.clone(),
            issued_at: t.issued_at,
            expires_at: t.expires_at,
            refresh_token: t.refresh_token.as_ref().map(|r| r.expose_secret().to_owned()),
            inputs: t.inputs.clone(),
            bootstrap: t.bootstrap.clone(),
            renewal_request: t.renewal_request.clone(),
            bound_certificate: t.bound_certificate.clone(),
        }),
        failures: (s.failures.attempts > 0).then(|| FailuresFormat {
            attempts: s.failures.attempts,
            last_failure: s.failures.last_failure,
            // Rounded up: waiting a fraction of a second longer than the server asked is
            // fine, shorter is not.
            retry_after_seconds: s.failures.retry_after.map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0)),
            inputs: s.failures.inputs.clone(),
        }),
        handled_renewal_request: s.handled_renewal_request.clone(),
        published_keys: s.published_keys.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn state_round_trips_privately() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns").join("demo.json");
        assert!(read(&path).token.is_none());
        let state = AgentState {
            token: Some(StoredToken {
                bound_certificate: None,
                access_token: "at".to_owned().into(),
                token_type: "Bearer".into(),
                scope: None,
                issued_at: "2026-11-22T10:00:00.5Z".parse().unwrap(),
                expires_at: "2026-11-22T11:00:00Z".parse().unwrap(),
                refresh_token: Some("rt".to_owned().into()),
                inputs: "abc".into(),
                bootstrap: Some("b".into()),
                renewal_request: None,
            }),
            failures: FailureRecord {
                attempts: 2,
                last_failure: Some("2026-11-22T10:30:00Z".parse().unwrap()),
                retry_after: Some(Duration::from_millis(1500)),
                inputs: Some("abc".into()),
            },
            handled_renewal_request: Some("now".into()),
            published_keys: vec!["access_token".into()],
        };
        write(&path, &state).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let back = read(&path);
        let token = back.token.unwrap();
        assert_eq!(token.refresh_token.unwrap().expose_secret(), "rt");
        assert_eq!(token.issued_at, state.token.unwrap().issued_at);
        assert_eq!(back.failures.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(back.failures.attempts, 2);
        assert_eq!(back.published_keys, vec!["access_token"]);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(read(&path).token.is_none());
    }
}
