//! The `tokensync` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokensync::telemetry::{self, LogFormat};

/// tokensync keeps short-lived OAuth2 access tokens fresh in Kubernetes Secrets.
///
/// A ClientCredential names a token endpoint and a Secret holding the client credentials;
/// tokensync obtains an access token, writes it to a target Secret and renews it before it
/// expires. Workloads mount the target Secret and never see the client secret.
#[derive(Parser, Debug)]
#[command(name = "tokensync", version, propagate_version = true)]
struct Cli {
    /// Log line format. The level is set with RUST_LOG (default: info for tokensync).
    #[arg(long, value_enum, default_value = "text", global = true, env = "TOKENSYNC_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator against the current kubeconfig or the in-cluster service account.
    ///
    /// Watches ClientCredentials (in all namespaces, or those given with --namespace),
    /// keeps their target Secrets filled with valid tokens, and serves /healthz, /readyz and
    /// /metrics on --admin-addr. Stops cleanly on SIGTERM.
    Controller(tokensync::controller::ControllerArgs),

    /// Print the CustomResourceDefinitions as YAML (ClientCredential and
    /// ClusterClientCredential, as one multi-document stream).
    ///
    /// The same files are committed in crds/; install them with
    /// `tokensync crd | kubectl apply --server-side -f -` or `kubectl apply -f crds/`.
    Crd {
        /// Print only this kind's CRD: ClientCredential or ClusterClientCredential.
        #[arg(long, value_parser = ["ClientCredential", "ClusterClientCredential"])]
        kind: Option<String>,
    },

    /// Obtain one access token from manifests on disk, exactly as the controller would.
    ///
    /// Reads the ClientCredential and the Secrets it references from YAML files, sends the
    /// token request and prints the result. Use it to debug a spec before applying it:
    /// errors say whether the server refused (and with which OAuth error) or could not be
    /// reached. Exit code 1: the token request failed; 2: the files or the spec are unusable.
    Fetch(tokensync::fetch::FetchArgs),

    /// Keep tokens fresh in files, without a cluster (laptops, VMs, sidecars).
    ///
    /// Reads ClientCredentials and the Secrets they reference from YAML files (secret values
    /// may also come from files, directories or environment variables), and keeps one token
    /// per credential in OUT_DIR/<namespace>/<name>/<key>, one file per key like a mounted
    /// Secret. Renewal, backoff and refresh-token handling are the controller's. SIGHUP or
    /// a change of the watched files reloads the configuration; SIGTERM/SIGINT stop it.
    /// With --proxy NAME=LISTEN=UPSTREAM it also serves a credential's token as an
    /// authenticating reverse proxy, for programs that cannot re-read a token file.
    /// Exit code 2: the configuration or a --proxy could not be loaded at start.
    Agent(tokensync::agent::AgentArgs),

    /// Show one credential: Ready and Degraded with reason, token times, failures, target
    /// Secret keys, recent Events and the JWT claims of its token (never the token).
    ///
    /// Uses your kubeconfig like kubectl (--kubeconfig, --context, -n). Exit code 2: the
    /// credential could not be read (no cluster, no CRD, not found, forbidden).
    Status(tokensync::ops::status::StatusArgs),

    /// Request an immediate renewal through the tokensync.io/renew-requested-at annotation.
    ///
    /// With --wait, waits until the controller has handled the request. Exit code 1: a
    /// renewal failed or timed out; 2: the request could not be made.
    Renew(tokensync::ops::renew::RenewArgs),
}

/// The file name kubectl looks for on PATH to offer `kubectl tokensync ...`.
const KUBECTL_PLUGIN: &str = "kubectl-tokensync";

fn main() -> ExitCode {
    // Installed as kubectl-tokensync, kubectl runs us with the arguments after
    // `kubectl tokensync`: the same subcommands, only the name in usage lines differs.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let plugin = std::path::Path::new(&argv0).file_stem().is_some_and(|s| s == KUBECTL_PLUGIN);
    let mut command = <Cli as clap::CommandFactory>::command();
    if plugin {
        command = command.bin_name("kubectl tokensync");
    }
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    telemetry::init(cli.log_format);
    match cli.command {
        Command::Controller(args) => block_on(true, async {
            match tokensync::controller::run(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "controller stopped");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
        Command::Agent(args) => block_on(true, async {
            match tokensync::agent::run(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "agent stopped");
                    eprintln!("error: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }),
        Command::Crd { kind } => {
            let documents: Vec<String> = match kind.as_deref() {
                Some("ClientCredential") => vec![tokensync::api::crd_yaml()],
                Some(_) => vec![tokensync::api::cluster::crd_yaml()],
                None => tokensync::api::all_crds().into_iter().map(|(_, yaml)| yaml).collect(),
            };
            print!("{}", documents.join("---\n"));
            ExitCode::SUCCESS
        }
        Command::Status(args) => block_on(false, async {
            let result = tokensync::ops::status::run(&args).await;
            printed(result.map_err(|e| (e.exit_code(), e.to_string())))
        }),
        Command::Renew(args) => block_on(false, async {
            match tokensync::ops::renew::run(&args, &mut std::io::stdout()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }),
        // One request: a single-threaded runtime is enough.
        Command::Fetch(args) => block_on(false, async {
            let result = tokensync::fetch::run(&args).await;
            printed(result.map_err(|e| (e.exit_code(), e.to_string())))
        }),
    }
}

/// A one-shot command's outcome: its output on stdout, or its error on stderr with its exit
/// code.
fn printed(result: Result<String, (u8, String)>) -> ExitCode {
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err((code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

/// Runs a command on a tokio runtime (multi-threaded for the long-running ones).
fn block_on(multi_thread: bool, command: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    match builder.enable_all().build() {
        Ok(runtime) => runtime.block_on(command),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
