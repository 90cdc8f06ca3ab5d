//! The Authlib jwt-bearer server (tests/authlib/server.py) as a child process: a real,
//! independently written RFC 7523 2.1 authorization server from PyPI, trusting a real
//! kube-apiserver's ServiceAccount issuer (served over TLS by the control plane's own CA).
//!
//! It runs from the virtualenv tests/authlib/install.sh makes (target/authlib-venv, or
//! TOKENSYNC_AUTHLIB_VENV); .ci/run calls that script. When the virtualenv is missing or holds
//! another Authlib than tests/authlib/requirements.txt pins, the tests fail with the command
//! to run: they never skip.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::support::child_server::{ChildServer, field};

/// Python start-up plus importing Authlib and cryptography, on 2 shared cores.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

const HOW_TO_INSTALL: &str = "run `bash tests/authlib/install.sh` in the repository (it makes target/authlib-venv \
     with the Authlib that tests/authlib/requirements.txt pins; .ci/run does it)";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    let venv = std::env::var_os("TOKENSYNC_AUTHLIB_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target").join("authlib-venv"));
    venv.join("bin").join("python")
}

fn server_script() -> PathBuf {
    root().join("tests").join("authlib").join("server.py")
}

/// Checks once per test process that the virtualenv runs the server with the pinned Authlib.
fn ensure_installed() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        let python = python();
        let requirements = std::fs::read_to_string(root().join("tests/authlib/requirements.txt"))
            .map_err(|e| format!("cannot read tests/authlib/requirements.txt: {e}"))?;
        let pinned = requirements
            .lines()
            .find_map(|l| l.strip_prefix("authlib=="))
            .map(|v| format!("authlib {}", v.split_whitespace().next().unwrap_or_default()))
            .ok_or("tests/authlib/requirements.txt does not pin authlib")?;
        let out =
            Command::new(&python).arg(server_script()).arg("--version").stdin(Stdio::null()).output().map_err(|e| {
                format!("the Authlib interop tests need {}, which cannot run ({e}): {HOW_TO_INSTALL}", python.display())
            })?;
        let found = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || found != pinned {
            return Err(format!(
                "{} does not run tests/authlib/server.py with {pinned} (found {found:?}; stderr: {}): {HOW_TO_INSTALL}",
                python.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    });
    if let Err(message) = checked {
        panic!("{message}");
    }
}

/// A running Authlib server; killed when dropped.
pub struct AuthlibServer {
    process: ChildServer,
    pub token_endpoint: String,
    pub whoami_endpoint: String,
}

impl AuthlibServer {
    /// Starts a server trusting ServiceAccount tokens of `issuer` whose subject is one of
    /// `trusted_subjects`; it reaches the issuer's discovery document and keys trusting only
    /// the CA in `ca_file`. `audiences` empty: the token endpoint URL is the only audience
    /// accepted. Returns once the server has answered its health check.
    pub async fn start(issuer: &str, ca_file: &Path, trusted_subjects: &[&str], audiences: &[&str]) -> AuthlibServer {
        ensure_installed();
        let mut command = Command::new(python());
        command.arg(server_script()).args(["--issuer", issuer, "--exit-on-stdin-eof"]).arg("--ca-file").arg(ca_file);
        for s in trusted_subjects {
            command.args(["--trust", s]);
        }
        for a in audiences {
            command.args(["--audience", a]);
        }
        let process = ChildServer::spawn(&mut command, "the Authlib server", HOW_TO_INSTALL);
        // Waited for off the runtime: the test's own servers (token servers, a controller) run
        // on it.
        let (process, ready) = tokio::task::spawn_blocking(move || {
            let ready = process.ready_line(STARTUP_TIMEOUT);
            (process, ready)
        })
        .await
        .unwrap();
        let server = AuthlibServer {
            token_endpoint: field(&ready, "token_endpoint"),
            whoami_endpoint: field(&ready, "whoami_endpoint"),
            process,
        };
        let health = http().get(field(&ready, "health_endpoint")).send().await;
        match health {
            Ok(r) if r.status() == 200 => {}
            other => panic!("the Authlib server's health check failed ({other:?}); stderr:\n{}", server.stderr()),
        }
        server
    }

    /// What the server says about a bearer token through its protected resource: (HTTP
    /// status, body). 200 means Authlib's resource protector accepted a token it issued.
    pub async fn whoami(&self, access_token: &str) -> (u16, Value) {
        let response = http().get(&self.whoami_endpoint).bearer_auth(access_token).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A jwt-bearer grant request sent by the test itself: (HTTP status, body).
    pub async fn token(&self, assertion: &str) -> (u16, Value) {
        let form = [("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", assertion)];
        let response = http().post(&self.token_endpoint).form(&form).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The server's request log (request lines only; it never prints a token).
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().expect("an HTTP client")
}
