//! panva's `oidc-provider` from npm (tests/oidc-provider/server.mjs) as a child process, for the
//! interop tests and the controller's mutual TLS tests, and the test PKI its HTTPS mode uses.
//!
//! Needs Node.js (>= 20) and npm on PATH. When tests/oidc-provider/node_modules is missing or
//! stale, the first test runs `npm ci --prefix tests/oidc-provider` itself (the npm registry is
//! reachable where the tests run); a missing `node` or a failed install fails the tests with the
//! command to run, it never skips them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use super::child_server::ChildServer;

/// How long the node server may take to print its ready line (cold start, 2 shared cores).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

pub const HOW_TO_INSTALL: &str = "Install Node.js >= 20 and npm (Debian: `apt-get update && apt-get install -y nodejs npm`), \
     then run `npm ci --prefix tests/oidc-provider` in the repository (.ci/run does both).";

pub fn server_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("oidc-provider")
}

/// Starts `node server.mjs --port 0 --exit-on-stdin-eof` plus `extra`; returns the process
/// and its ready line.
pub fn spawn(extra: &[&std::ffi::OsStr]) -> (ChildServer, Value) {
    ensure_node_modules();
    let dir = server_dir();
    let mut command = Command::new("node");
    command.arg(dir.join("server.mjs")).args(["--port", "0", "--exit-on-stdin-eof"]).args(extra).current_dir(&dir);
    let process =
        ChildServer::spawn(&mut command, "oidc-provider (`node tests/oidc-provider/server.mjs`)", HOW_TO_INSTALL);
    let ready = process.ready_line(STARTUP_TIMEOUT);
    (process, ready)
}

/// Checks node and installs node_modules once per test process (and, through a file lock,
/// once across processes, e.g. under cargo-nextest).
pub fn ensure_node_modules() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(message) = READY.get_or_init(install_node_modules) {
        panic!("{message}");
    }
}

fn install_node_modules() -> Result<(), String> {
    let version = Command::new("node").arg("--version").output().map_err(|e| {
        format!(
            "the oidc-provider interop tests need Node.js, but `node --version` could not run ({e}). {HOW_TO_INSTALL}"
        )
    })?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    let major: u32 = version.trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    if major < 20 {
        return Err(format!("the oidc-provider interop tests need Node.js >= 20, found {version:?}. {HOW_TO_INSTALL}"));
    }

    let dir = server_dir();
    if installed_matches_pin(&dir)? {
        return Ok(());
    }
    // Another test process may be installing right now: take the lock, then look again.
    let lock = File::open(dir.join("package.json")).map_err(|e| format!("cannot open package.json: {e}"))?;
    lock.lock().map_err(|e| format!("cannot lock tests/oidc-provider/package.json: {e}"))?;
    if installed_matches_pin(&dir)? {
        return Ok(());
    }
    eprintln!("interop: running `npm ci --prefix tests/oidc-provider`");
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`npm ci --prefix tests/oidc-provider` could not run ({e}). {HOW_TO_INSTALL}"))?;
    if !out.status.success() {
        return Err(format!(
            "`npm ci --prefix tests/oidc-provider` failed ({}):\n{}\n{HOW_TO_INSTALL}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    if !installed_matches_pin(&dir)? {
        return Err(format!("`npm ci` ran but node_modules/oidc-provider is still missing. {HOW_TO_INSTALL}"));
    }
    Ok(())
}

/// Whether node_modules holds the oidc-provider version package.json pins.
fn installed_matches_pin(dir: &Path) -> Result<bool, String> {
    let read_json = |path: PathBuf| -> Option<Value> { serde_json::from_slice(&std::fs::read(path).ok()?).ok() };
    let pinned = read_json(dir.join("package.json"))
        .and_then(|p| p["dependencies"]["oidc-provider"].as_str().map(str::to_owned))
        .ok_or("tests/oidc-provider/package.json does not pin oidc-provider")?;
    let installed = read_json(dir.join("node_modules/oidc-provider/package.json"))
        .and_then(|p| p["version"].as_str().map(str::to_owned));
    Ok(installed.as_deref() == Some(pinned.as_str()))
}

// ---------------------------------------------------------------------------------------------
// Test PKI for `server.mjs --tls-dir`

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Identity {
    /// base64url(SHA-256(DER)) of the certificate, computed here, independently of tokensync:
    /// the x5t#S256 of RFC 8705 3.1.
    pub fn thumbprint(&self) -> String {
        let der = rustls_pemfile::certs(&mut self.cert_pem.as_bytes()).next().expect("a PEM certificate").unwrap();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(der.as_ref()))
    }

    /// The base64 body of the key, to look for in output that must not contain it.
    pub fn key_body(&self) -> String {
        self.key_pem.lines().filter(|l| !l.starts_with("-----")).collect()
    }
}

/// A CA, the server's certificate for 127.0.0.1 and the registered self-signed client
/// certificate, written to a directory `server.mjs --tls-dir` reads.
pub struct Pki {
    pub dir: TempDir,
    pub ca_pem: String,
    ca: Issuer<'static, KeyPair>,
    /// The certificate registered for interop-self-signed.
    pub self_signed: Identity,
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    (pem, Issuer::new(params, key))
}

fn leaf(cn: &str, expired: bool) -> (CertificateParams, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    (params, KeyPair::generate().unwrap())
}

impl Pki {
    pub fn new() -> Pki {
        let (ca_pem, ca) = ca("tokensync interop CA");
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let self_signed = self_signed("interop-self-signed");
        let dir = TempDir::new().unwrap();
        for (file, text) in [
            ("ca.crt", ca_pem.as_str()),
            ("server.crt", &server.pem()),
            ("server.key", &server_key.serialize_pem()),
            ("self-signed.crt", &self_signed.cert_pem),
        ] {
            std::fs::write(dir.path().join(file), text).unwrap();
        }
        Pki { dir, ca_pem, ca, self_signed }
    }

    /// A client certificate for `cn` issued by the CA the server trusts.
    pub fn client(&self, cn: &str) -> Identity {
        let (params, key) = leaf(cn, false);
        Identity { cert_pem: params.signed_by(&key, &self.ca).unwrap().pem(), key_pem: key.serialize_pem() }
    }

    /// Like [`Pki::client`], valid only in 2020.
    pub fn expired_client(&self, cn: &str) -> Identity {
        let (params, key) = leaf(cn, true);
        Identity { cert_pem: params.signed_by(&key, &self.ca).unwrap().pem(), key_pem: key.serialize_pem() }
    }
}

/// A client certificate for `cn` from a CA the server does not know.
pub fn untrusted_client(cn: &str) -> Identity {
    let (_, other_ca) = ca("not the interop CA");
    let (params, key) = leaf(cn, false);
    Identity { cert_pem: params.signed_by(&key, &other_ca).unwrap().pem(), key_pem: key.serialize_pem() }
}

/// A self-signed certificate for `cn`.
pub fn self_signed(cn: &str) -> Identity {
    let (params, key) = leaf(cn, false);
    Identity { cert_pem: params.self_signed(&key).unwrap().pem(), key_pem: key.serialize_pem() }
}
