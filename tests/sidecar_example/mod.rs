//! The agent's sidecar examples (`examples/agent-*.yaml`) made runnable in a test: the Pod's
//! agent arguments pointed at a temporary copy of the example's ConfigMap and Secret volume.
//! Shared by `tests/agent.rs` and `tests/agent_proxy.rs`.

use std::path::{Path, PathBuf};

use serde_json::Value;

pub struct SidecarExample {
    pub docs: Vec<Value>,
    /// The agent container's arguments, with the Pod's paths replaced by the temporary ones
    /// and "tokensync" as the program name.
    pub argv: Vec<String>,
    /// Where the copies are; removed when dropped.
    pub dir: tempfile::TempDir,
}

impl SidecarExample {
    /// Loads `examples/NAME`, writes its ConfigMap's credentials.yaml and its Secret's
    /// client_id and client_secret (into `secret_files`, relative to the temporary folder),
    /// and points the agent's arguments at them: `pod_secrets` (the Secret volume's path in
    /// the Pod) becomes `local_secrets` in the temporary folder.
    pub fn load(name: &str, pod_secrets: &str, local_secrets: &str, secret_files: &str) -> SidecarExample {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        let mut example = SidecarExample { docs, argv: Vec::new(), dir: tempfile::tempdir().unwrap() };
        let config = example.kind("ConfigMap")["data"]["credentials.yaml"].as_str().unwrap().to_owned();
        let agent = &example.kind("Pod")["spec"]["initContainers"][0];
        let args: Vec<String> =
            agent["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect();
        assert_eq!(args[0], "agent");
        let root = example.dir.path().to_path_buf();
        std::fs::write(root.join("credentials.yaml"), config).unwrap();
        let files = root.join(secret_files);
        std::fs::create_dir_all(&files).unwrap();
        let secret = example.kind("Secret").clone();
        for key in ["client_id", "client_secret"] {
            std::fs::write(files.join(key), secret["stringData"][key].as_str().unwrap()).unwrap();
        }
        let local: PathBuf = root.join(local_secrets);
        let root = root.display().to_string();
        example.argv = std::iter::once("tokensync".to_owned())
            .chain(args[1..].iter().map(|a| {
                a.replace("/etc/tokensync/config", &root)
                    .replace(pod_secrets, &local.display().to_string())
                    .replace("/var/run/tokens", &format!("{root}/tokens"))
                    .replace("/var/lib/tokensync", &format!("{root}/state"))
            }))
            .collect();
        example
    }

    /// The example's object of this kind.
    pub fn kind(&self, kind: &str) -> &Value {
        self.docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"))
    }
}
