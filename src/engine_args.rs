//! The flags that shape token requests and their schedule, shared by `tokensync controller`
//! and `tokensync agent` so both accept the same names, defaults and meanings.

use std::time::Duration;

use clap::Args;

use crate::api::duration::parse_duration;
use crate::oauth::{EndpointPolicy, TokenClient, TransportSettings};
use crate::schedule::{BackoffPolicy, RenewalPolicy};

/// Renewal, backoff and endpoint policy flags.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Delay after the first failed token request; it doubles with each further failure.
    #[arg(long, default_value = "5s", value_parser = duration_arg)]
    pub backoff_min: Duration,

    /// Longest delay between failed token requests (also the delay after a permanent error).
    #[arg(long, default_value = "5m", value_parser = duration_arg)]
    pub backoff_max: Duration,

    /// A token is renewed at least this long before it expires (where its lifetime allows),
    /// so pods reading a mounted Secret, which kubelet refreshes about once a minute, never
    /// get a token that is about to expire.
    #[arg(long, default_value = "60s", value_parser = duration_arg)]
    pub propagation_margin: Duration,

    /// A credential is never renewed sooner than this after its token was issued, however
    /// short the token's lifetime: a server handing out 1-second tokens is not asked in a
    /// tight loop.
    #[arg(long, default_value = "10s", value_parser = duration_arg)]
    pub min_renewal_interval: Duration,

    /// Permit plain http:// token endpoints. Only for tests and endpoints reached over a
    /// trusted network.
    #[arg(long)]
    pub allow_http: bool,

    /// Token endpoint hosts that may be called (comma-separated; `*.example.com` matches
    /// subdomains). Default: any host not denied.
    #[arg(long, value_delimiter = ',', value_name = "HOSTS")]
    pub allowed_token_hosts: Vec<String>,

    /// Token endpoint hosts that may never be called (comma-separated, wildcards allowed).
    #[arg(long, value_delimiter = ',', value_name = "HOSTS")]
    pub denied_token_hosts: Vec<String>,

    /// Allow link-local and cloud metadata addresses (169.254.169.254 and friends) as token
    /// endpoints. Off by default: a ClientCredential author must not be able to reach the
    /// node's cloud credentials through the operator.
    #[arg(long)]
    pub allow_metadata_addresses: bool,

    /// Timeout of each token, refresh, discovery or verify request.
    #[arg(long, default_value = "30s", value_parser = duration_arg)]
    pub request_timeout: Duration,
}

pub fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

impl EngineArgs {
    pub fn renewal_policy(&self) -> RenewalPolicy {
        RenewalPolicy {
            propagation_margin: self.propagation_margin,
            min_interval: self.min_renewal_interval,
            ..Default::default()
        }
    }

    pub fn backoff_policy(&self) -> BackoffPolicy {
        BackoffPolicy { initial: self.backoff_min, max: self.backoff_max.max(self.backoff_min) }
    }

    pub fn engine(&self) -> TokenClient {
        TokenClient::new(
            EndpointPolicy {
                allow_http: self.allow_http,
                allowed_hosts: self.allowed_token_hosts.clone(),
                denied_hosts: self.denied_token_hosts.clone(),
                deny_metadata_addresses: !self.allow_metadata_addresses,
            },
            TransportSettings { request_timeout: self.request_timeout, ..Default::default() },
        )
    }
}
