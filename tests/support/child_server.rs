//! A test server written in another language (npm's oidc-provider, Authlib in Python), run as a
//! child process. It prints one JSON line on stdout when it is ready, logs to stderr, and exits
//! when its stdin closes, so it never outlives a test process that died. Killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::Value;

pub struct ChildServer {
    /// Names the server in panics.
    what: String,
    child: Child,
    /// Kept open: the server exits when its stdin closes.
    _stdin: ChildStdin,
    stderr: Arc<Mutex<String>>,
    ready: Receiver<std::io::Result<String>>,
}

impl ChildServer {
    /// Spawns `command` with piped stdio; `what` names it and `how_to_install` says how to get
    /// it when it cannot start.
    pub fn spawn(command: &mut Command, what: &str, how_to_install: &str) -> ChildServer {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}. {how_to_install}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");

        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                let mut all = sink.lock().unwrap_or_else(|e| e.into_inner());
                all.push_str(&line);
                all.push('\n');
            }
        });
        let (ready_tx, ready) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = ready_tx.send(reader.read_line(&mut line).map(|_| line));
            // Keep draining so the server can never block on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        ChildServer { what: what.to_owned(), child, _stdin: stdin, stderr, ready }
    }

    /// Blocks until the server's ready line and returns it as JSON; panics with its stderr when
    /// it exits first or says nothing within `timeout`. Call it off the async runtime when
    /// servers of the same test (the API server double) run on that runtime.
    pub fn ready_line(&self, timeout: Duration) -> Value {
        let what = &self.what;
        let line = match self.ready.recv_timeout(timeout) {
            Ok(Ok(line)) if !line.trim().is_empty() => line,
            Ok(Ok(_)) => panic!("{what} exited before it was ready; stderr:\n{}", self.stderr()),
            Ok(Err(e)) => panic!("cannot read {what}'s stdout: {e}; stderr:\n{}", self.stderr()),
            Err(RecvTimeoutError::Timeout) => {
                panic!("{what} printed no ready line within {timeout:?}; stderr:\n{}", self.stderr())
            }
            Err(RecvTimeoutError::Disconnected) => panic!("{what}'s stdout reader died"),
        };
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{what}'s ready line is not JSON ({e}): {line:?}"))
    }

    /// What the server logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A string field of a ready line; panics naming it when it is missing.
pub fn field(ready: &Value, name: &str) -> String {
    ready[name].as_str().unwrap_or_else(|| panic!("the ready line lacks {name}: {ready}")).to_owned()
}
