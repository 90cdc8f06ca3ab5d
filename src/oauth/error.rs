//! Classified token acquisition failures.
//!
//! The controller acts on three things: which condition reason to show ([`ErrorKind`]),
//! whether retrying can help ([`TokenError::permanent`]) and how long the server asked us to
//! wait ([`TokenError::retry_after`]). Messages are written for the user who has to fix the
//! problem, and never contain a credential: anything that came back from a server passes
//! through [`Redactor`] first, because servers do echo requests back.

use std::fmt;
use std::time::Duration;

/// What went wrong, in the controller's vocabulary: each kind maps to one condition reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The configuration cannot work as written: an http URL while http is not allowed, a
    /// denied host, an unusable private key, an OIDC issuer mismatch. Reason `InvalidSpec`.
    InvalidConfiguration,
    /// The credential material is missing or unusable (no client secret, no refresh
    /// token). Reason `SourceSecretInvalid`.
    InvalidCredentials,
    /// The server answered and refused: an RFC 6749 5.2 error or another 4xx.
    /// Reason `TokenRequestRejected`.
    Rejected,
    /// The server could not be reached or is failing: connection errors, timeouts, TLS
    /// failures, 5xx, 429. Reason `TokenEndpointUnavailable`.
    Unavailable,
    /// The server answered 2xx but the body holds no usable token. Reason
    /// `InvalidTokenResponse`.
    InvalidResponse,
    /// The verification probe (spec.verify) refused the new token. Reason
    /// `TokenVerificationFailed`.
    VerificationFailed,
    /// Material the caller obtains for each request (a Kubernetes ServiceAccount token)
    /// could not be obtained or was refused by the caller's own safety rules; the reason is
    /// the caller's.
    Source(&'static str),
}

impl ErrorKind {
    /// The condition reason this kind is reported as.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorKind::InvalidConfiguration => "InvalidSpec",
            ErrorKind::InvalidCredentials => "SourceSecretInvalid",
            ErrorKind::Rejected => "TokenRequestRejected",
            ErrorKind::Unavailable => "TokenEndpointUnavailable",
            ErrorKind::InvalidResponse => "InvalidTokenResponse",
            ErrorKind::VerificationFailed => "TokenVerificationFailed",
            ErrorKind::Source(reason) => reason,
        }
    }
}

/// A failed token acquisition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError {
    pub kind: ErrorKind,
    /// True when retrying the same request cannot succeed until something changes (the spec,
    /// the credentials, the server's configuration). The controller still retries permanent
    /// errors, but with the maximum backoff.
    pub permanent: bool,
    /// How long the server asked us to wait (Retry-After), if it did.
    pub retry_after: Option<Duration>,
    /// The HTTP status, when a server answered.
    pub status: Option<u16>,
    /// The RFC 6749 5.2 error code, when the server sent one.
    pub oauth_error: Option<String>,
    /// A message for the user; never holds a credential.
    pub message: String,
}

impl TokenError {
    pub fn new(kind: ErrorKind, permanent: bool, message: impl Into<String>) -> Self {
        TokenError { kind, permanent, retry_after: None, status: None, oauth_error: None, message: message.into() }
    }

    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidConfiguration, true, message)
    }

    pub fn credentials(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidCredentials, true, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, false, message)
    }

    pub fn invalid_response(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidResponse, false, message)
    }

    /// "permanent" or "transient", for messages and metrics labels.
    pub fn class(&self) -> &'static str {
        if self.permanent { "permanent" } else { "transient" }
    }

    /// Prefixes the message with what was being done, e.g. "refresh at https://...".
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, {})", self.message, self.kind.reason(), self.class())?;
        if let Some(after) = self.retry_after {
            write!(f, "; server asked to retry after {}s", after.as_secs())?;
        }
        Ok(())
    }
}

impl std::error::Error for TokenError {}

/// Removes known secret values from text that came back from a server (error
/// descriptions, body excerpts). Each secret is also matched in the encodings it was sent in
/// (form-urlencoded, percent-encoded), since a server may echo the raw request.
#[derive(Default)]
pub struct Redactor {
    needles: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} values)", self.needles.len())
    }
}

impl Redactor {
    /// Registers a secret value. Very short values are skipped: replacing every "a" in a
    /// message would make it unreadable and protects nothing.
    pub fn add(&mut self, secret: &str) {
        if secret.len() < 4 {
            return;
        }
        let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let percent = form.replace('+', "%20");
        for needle in [secret.to_owned(), form, percent] {
            if !self.needles.contains(&needle) {
                self.needles.push(needle);
            }
        }
        // Longest first, so a secret containing another is removed whole.
        self.needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for needle in &self.needles {
            if out.contains(needle.as_str()) {
                out = out.replace(needle.as_str(), "[redacted]");
            }
        }
        out
    }
}

/// A short, single-line, printable excerpt of a response body for error messages.
pub fn excerpt(body: &[u8], redactor: &Redactor) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    let collapsed: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let redacted = redactor.redact(&collapsed);
    if redacted.chars().count() > MAX {
        let cut: String = redacted.chars().take(MAX).collect();
        format!("{cut}…")
    } else {
        redacted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redactor_removes_raw_and_encoded_secrets() {
        let mut r = Redactor::default();
        r.add("s3cr:t+value/é");
        let echoed = "client_secret=s3cr%3At%2Bvalue%2F%C3%A9 or s3cr:t+value/é or s3cr%3At%2Bvalue%2F%C3%A9";
        let out = r.redact(echoed);
        assert!(!out.contains("s3cr"), "{out}");
    }

    #[test]
    fn excerpt_is_short_single_line_and_redacted() {
        let mut r = Redactor::default();
        r.add("hunter22");
        let body = format!("<html>\n<body>{}hunter22</body></html>", "x".repeat(500));
        let e = excerpt(body.as_bytes(), &r);
        assert!(!e.contains('\n') && !e.contains("hunter22"));
        assert!(e.chars().count() <= 201);
    }

    #[test]
    fn display_says_reason_and_class() {
        let mut e = TokenError::unavailable("connection refused");
        e.retry_after = Some(Duration::from_secs(30));
        assert_eq!(
            e.to_string(),
            "connection refused (TokenEndpointUnavailable, transient); server asked to retry after 30s"
        );
    }
}
