//! `tokensync fetch`: one token from manifests on disk, acquired exactly as the controller
//! acquires it. This is how users debug a spec before applying it.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::api::engine::{self, SourceError};
use crate::api::validate::validate;
use crate::manifest::Manifests;
use crate::oauth::{EndpointPolicy, TokenClient, TokenError, TransportSettings};

/// What `fetch` prints on success.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// {"access_token", "token_type", "expires_at", "scope", and "refresh_token" when the
    /// server returned one; with mutual TLS "client_certificate" (subject, not_after,
    /// x5t#S256 of the certificate presented) and "cnf" when the token is bound to it}.
    Json,
    /// Only the access token, for `curl -H "Authorization: Bearer $(tokensync fetch ...)"`.
    Token,
}

/// Arguments of `tokensync fetch`.
#[derive(Args, Debug)]
pub struct FetchArgs {
    /// YAML file holding the ClientCredential and the Secret(s) it references (multi-document
    /// files are fine; Secret values in `data` (base64) or `stringData`). Repeat for
    /// several files.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,

    /// Which ClientCredential to use when the files hold more than one.
    #[arg(long)]
    pub name: Option<String>,

    /// Output format.
    #[arg(short, long, value_enum, default_value = "json")]
    pub output: OutputFormat,

    /// Permit plain http:// endpoints (local test servers). Never needed for real vendors.
    #[arg(long)]
    pub allow_http: bool,

    /// Request timeout in seconds.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub timeout: u64,

    /// A ServiceAccount token file (for example a projected token, or the output of
    /// `kubectl create token NAME --audience AUD`) for a spec with serviceAccountRef.
    #[arg(long, value_name = "PATH")]
    pub service_account_token_file: Option<PathBuf>,
}

/// How `fetch` failed; the exit code tells the two apart.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The manifests or the spec are unusable (exit code 2).
    #[error("{0}")]
    Input(String),
    /// The token request failed (exit code 1).
    #[error("{0}")]
    Token(#[from] TokenError),
}

impl FetchError {
    pub fn exit_code(&self) -> u8 {
        match self {
            FetchError::Input(_) => 2,
            FetchError::Token(_) => 1,
        }
    }
}

/// Runs `fetch` and returns what to print on stdout.
pub async fn run(args: &FetchArgs) -> Result<String, FetchError> {
    let manifests = Manifests::load_files(&args.files).map_err(|e| FetchError::Input(e.to_string()))?;
    let candidates: Vec<_> = manifests
        .client_credentials
        .iter()
        .filter(|cc| args.name.as_ref().is_none_or(|n| cc.metadata.name.as_ref() == Some(n)))
        .collect();
    let cc = match candidates.as_slice() {
        [one] => *one,
        [] => {
            return Err(FetchError::Input("no ClientCredential found in the given files (or none with --name)".into()));
        }
        _ => return Err(FetchError::Input("the files hold several ClientCredentials; choose one with --name".into())),
    };
    let name = cc.metadata.name.clone().unwrap_or_default();
    let namespace = cc.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    validate(&cc.spec, &name).map_err(|e| FetchError::Input(format!("ClientCredential {namespace}/{name}: {e}")))?;
    let mut config = engine::token_request_config(&cc.spec).map_err(FetchError::Input)?;

    let data_of = |secret: &str| manifests.secret(&namespace, secret).and_then(|s| s.data.as_ref());
    let source = |e: SourceError| FetchError::Input(format!("{}: {e} in the given files", e.reason()));
    let data = match &cc.spec.credentials_ref {
        Some(r) => {
            Some(data_of(&r.name).ok_or_else(|| source(SourceError::NotFound(format!("{namespace}/{}", r.name))))?)
        }
        None => None,
    };
    let mut credentials = engine::credentials(&cc.spec, data).map_err(source)?;
    if cc.spec.service_account_ref.is_some() {
        // A projected ServiceAccount token (kubelet keeps it fresh), read for this request.
        let path = args.service_account_token_file.as_ref().ok_or_else(|| {
            FetchError::Input(
                "spec.serviceAccountRef: give the ServiceAccount token with --service-account-token-file".into(),
            )
        })?;
        credentials.federated_token = Some(crate::agent::read_token_file(path).map_err(FetchError::Input)?);
    }
    config.tls = engine::tls_material(&cc.spec, data_of).map_err(source)?;

    let policy = EndpointPolicy { allow_http: args.allow_http, ..Default::default() };
    let settings = TransportSettings {
        request_timeout: std::time::Duration::from_secs(args.timeout.max(1)),
        ..Default::default()
    };
    let client = TokenClient::new(policy, settings);
    let acquired = client.acquire(&config, &credentials, None).await?;
    let token = &acquired.token;
    tracing::info!(flow = ?acquired.flow, expires_at = %token.expires_at, "token acquired");
    Ok(match args.output {
        OutputFormat::Token => format!("{}\n", token.access_token.expose_secret()),
        OutputFormat::Json => {
            let mut out = json!({
                "access_token": token.access_token.expose_secret(),
                "token_type": token.token_type,
                "expires_at": token.expires_at.round(jiff::Unit::Second).unwrap_or(token.expires_at).to_string(),
            });
            if let Some(scope) = &token.scope {
                out["scope"] = scope.clone().into();
            }
            if let Some(rt) = &token.refresh_token {
                out["refresh_token"] = rt.expose_secret().into();
            }
            // RFC 8705 3: the token only works with this certificate.
            if let Some(x5t) = &token.bound_certificate {
                out["cnf"] = json!({"x5t#S256": x5t});
            }
            if let Some(cert) = &acquired.certificate {
                out["client_certificate"] = json!({
                    "subject": cert.subject,
                    "not_after": cert.not_after.to_string(),
                    "x5t#S256": cert.thumbprint,
                });
            }
            format!("{}\n", serde_json::to_string_pretty(&out).expect("JSON serializes"))
        }
    })
}
