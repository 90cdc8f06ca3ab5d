//! A real Kubernetes control plane for the tests: etcd, kube-apiserver and
//! kube-controller-manager (garbage collector, namespace and ServiceAccount controllers) built
//! from Kubernetes' Go modules (`tests/kube/build.sh`, run on first use) and started on
//! 127.0.0.1 by `tests/kube/controlplane`, with their own PKI and ServiceAccount issuer, as
//! controller-runtime's envtest does.
//!
//! - [`ControlPlane::shared`]: one per test binary, started on first use; each test takes its
//!   own namespace ([`ControlPlane::namespace`]). The CRDs in `crds/` are installed with the
//!   real `kubectl apply --server-side` before the controller manager starts (its garbage
//!   collector discovers resources at start, then only every 30 s).
//! - [`ControlPlane::dedicated`]: a control plane of a test's own, for faults that would
//!   disturb other tests (the API server or etcd stopped and started again).
//!
//! No process outlives the test binary: the launcher stops everything when its stdin closes
//! (the test process exited, killed or not), and its children die with it (Pdeathsig).
//!
//! Which tests run here and which on the in-process double (`support::apiserver`): a test
//! that can run on a real server runs here. The double is kept for what a real server cannot
//! stage on demand: watches held back or expired at a chosen moment, a watch cache lagging
//! behind etcd, requests that hang for one client only, writes failed with a chosen code, and
//! exact request counts by verb (the real server's own metrics count every client).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;

/// The Kubernetes version the tests run against: a folder `tests/kube/k8s-VERSION`.
/// `TOKENSYNC_KUBE_VERSION=1.33 cargo test` runs them against another one
/// (`tests/kube/versions.sh` runs the real-server suites against each).
pub fn version() -> String {
    std::env::var("TOKENSYNC_KUBE_VERSION").unwrap_or_else(|_| "1.36".to_owned())
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the control plane's programs once per test binary (skipped by the script when they
/// are up to date) and returns the folder that holds them.
pub fn bin_dir() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let version = version();
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join("target"));
        let dir = target.join("kube").join(&version).join("bin");
        eprintln!("tests: a real Kubernetes {version} control plane (tests/kube/build.sh builds it on first use)");
        let status = Command::new("bash")
            .arg(repo().join("tests/kube/build.sh"))
            .arg(&version)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .unwrap_or_else(|e| panic!("cannot run bash tests/kube/build.sh: {e}"));
        assert!(
            status.success(),
            "bash tests/kube/build.sh {version} failed ({status}): the real control plane cannot be built; see its \
             output above"
        );
        dir
    })
}

struct Launcher {
    child: Child,
    /// Closing it stops the control plane.
    stdin: Option<ChildStdin>,
    replies: Receiver<String>,
}

/// A running control plane. Cheap to clone; the last clone stops it when dropped.
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

struct Inner {
    launcher: Mutex<Launcher>,
    server: String,
    kubeconfig: PathBuf,
    issuer: String,
    ca_file: PathBuf,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let launcher = self.launcher.get_mut().unwrap_or_else(|e| e.into_inner());
        // Closing stdin asks for an orderly stop (each child gets SIGTERM, then SIGKILL after
        // 5 s); the kill is for a launcher that does not exit by then.
        drop(launcher.stdin.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while matches!(launcher.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = launcher.child.kill();
        let _ = launcher.child.wait();
    }
}

impl ControlPlane {
    /// This test binary's control plane, started on first use.
    pub fn shared() -> ControlPlane {
        static SHARED: OnceLock<ControlPlane> = OnceLock::new();
        SHARED.get_or_init(|| ControlPlane::start_with(&[])).clone()
    }

    /// A control plane of its own, for a test that stops its API server or etcd.
    pub fn dedicated() -> ControlPlane {
        ControlPlane::start_with(&[])
    }

    /// A control plane with these kube-apiserver feature gates (`Name=true,Other=false`).
    pub fn with_feature_gates(gates: &str) -> ControlPlane {
        ControlPlane::start_with(&["--feature-gates", gates])
    }

    fn start_with(extra: &[&str]) -> ControlPlane {
        let bin = bin_dir();
        let work = repo().join("target/kube/run");
        std::fs::create_dir_all(&work).expect("target/kube/run");
        let mut child = Command::new(bin.join("controlplane"))
            .arg("--bin-dir")
            .arg(bin)
            .arg("--work-dir")
            .arg(&work)
            .arg("--crds")
            .arg(repo().join("crds"))
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.join("controlplane").display()));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut launcher = Launcher { child, stdin: Some(stdin), replies };
        let ready = match launcher.replies.recv_timeout(Duration::from_secs(180)) {
            Ok(line) => serde_json::from_str::<Value>(&line).expect("the launcher's ready line is JSON"),
            Err(RecvTimeoutError::Timeout) => panic!("the control plane was not ready within 180 s"),
            Err(RecvTimeoutError::Disconnected) => {
                panic!("the control plane did not start: {:?} (its error is above)", launcher.child.wait())
            }
        };
        let path = |key: &str| PathBuf::from(ready[key].as_str().expect("ready line field"));
        ControlPlane {
            inner: Arc::new(Inner {
                launcher: Mutex::new(launcher),
                server: ready["server"].as_str().unwrap().to_owned(),
                kubeconfig: path("kubeconfig"),
                issuer: ready["issuer"].as_str().unwrap().to_owned(),
                ca_file: path("caFile"),
            }),
        }
    }

    pub fn server(&self) -> &str {
        &self.inner.server
    }

    /// The ServiceAccount issuer (its discovery document is served by the API server).
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    pub fn ca_file(&self) -> &Path {
        &self.inner.ca_file
    }

    /// A kubeconfig for a cluster admin (`system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.inner.kubeconfig
    }

    /// The real kubectl, as the cluster admin.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(bin_dir().join("kubectl"));
        cmd.env("KUBECONFIG", self.kubeconfig()).env_remove("KUBERNETES_SERVICE_HOST");
        cmd
    }

    /// A kubeconfig for a user authenticated by a client certificate (CN=`name`, O=`groups`).
    pub fn user_kubeconfig(&self, name: &str, groups: &[&str]) -> PathBuf {
        let mut cmd = format!("user {name}");
        if !groups.is_empty() {
            cmd.push(' ');
            cmd.push_str(&groups.join(","));
        }
        let reply = self.command_blocking(&cmd);
        PathBuf::from(reply["kubeconfig"].as_str().expect("a kubeconfig path"))
    }

    pub async fn config(&self) -> kube::Config {
        config_from(self.kubeconfig()).await
    }

    /// A cluster admin's client.
    pub async fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config().await).expect("a client for the control plane")
    }

    /// A new namespace `<prefix>-<random>` for one test.
    pub async fn namespace(&self, prefix: &str) -> String {
        let namespaces: Api<Namespace> = Api::all(self.client().await);
        let ns = Namespace {
            metadata: ObjectMeta { generate_name: Some(format!("{prefix}-")), ..Default::default() },
            ..Default::default()
        };
        namespaces.create(&PostParams::default(), &ns).await.expect("create a test namespace").metadata.name.unwrap()
    }

    /// SIGTERM to kube-apiserver (SIGKILL after 3 s: it stops listening at once, then drains
    /// open watches for up to 60 s); returns once it has exited. etcd keeps running.
    pub async fn stop_apiserver(&self) {
        self.command("stop apiserver").await;
    }

    /// Starts kube-apiserver again on the same port and etcd; returns once /readyz says ok.
    pub async fn start_apiserver(&self) {
        self.command("start apiserver").await;
    }

    pub async fn stop_etcd(&self) {
        self.command("stop etcd").await;
    }

    pub async fn start_etcd(&self) {
        self.command("start etcd").await;
    }

    /// Runs a launcher command on a thread of its own, so that the test's runtime (and the
    /// controller on it) goes on while the control plane changes.
    async fn command(&self, cmd: &str) -> Value {
        let (plane, cmd) = (self.clone(), cmd.to_owned());
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = tx.send(plane.command_blocking(&cmd));
        });
        rx.await.expect("the launcher command thread answers")
    }

    fn command_blocking(&self, cmd: &str) -> Value {
        let mut launcher = self.inner.launcher.lock().unwrap_or_else(|e| e.into_inner());
        let stdin = launcher.stdin.as_mut().expect("the control plane is running");
        writeln!(stdin, "{cmd}").and_then(|_| stdin.flush()).expect("write to the launcher");
        let line = launcher
            .replies
            .recv_timeout(Duration::from_secs(180))
            .unwrap_or_else(|e| panic!("the launcher did not answer {cmd:?}: {e}"));
        let reply: Value = serde_json::from_str(&line).expect("the launcher answers JSON");
        assert_eq!(reply["ok"], true, "{cmd:?} failed: {}", reply["error"].as_str().unwrap_or_default());
        reply
    }
}

/// A kube::Config from a kubeconfig file, as `--kubeconfig` reads it.
pub async fn config_from(path: &Path) -> kube::Config {
    let kubeconfig = Kubeconfig::read_from(path).expect("a readable kubeconfig");
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("a usable kubeconfig")
}
