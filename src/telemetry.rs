//! Logging setup: tracing to stderr as text or JSON, filtered by RUST_LOG.

use std::ffi::OsStr;
use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Installs the global subscriber. RUST_LOG overrides the default level (`info` for
/// tokensync, `warn` for everything else).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,tokensync=info"));
    let no_color = std::env::var_os("NO_COLOR");
    let ansi = colored(std::io::stderr().is_terminal(), no_color.as_deref());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}

/// Whether log lines carry ANSI colour codes: only on a terminal, and never when NO_COLOR is
/// set to a non-empty value (no-color.org). A pod's log, a file or a pipe is not a terminal,
/// and escape codes there only garble what people and log pipelines read.
pub fn colored(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colored(true, None));
        assert!(colored(true, Some(OsStr::new(""))), "an empty NO_COLOR does not count");
        assert!(!colored(true, Some(OsStr::new("1"))));
        assert!(!colored(false, None), "a pipe, a file or a pod log");
    }
}
