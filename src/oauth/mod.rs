//! Token acquisition: everything between a token request's configuration and an access
//! token, with no knowledge of Kubernetes. The controller, `tokensync fetch` and the agent
//! all drive this module; nothing here may import kube.
//!
//! - [`config`]: what a request needs (endpoint, grant, auth method, encoding, mapping).
//! - [`client`]: the engine, [`TokenClient::acquire`].
//! - [`request`], [`assertion`]: building requests and signing JWTs.
//! - [`response`]: reading token responses and classifying errors.
//! - [`transport`]: HTTP with timeouts, size caps, TLS and the endpoint policy.
//! - [`discovery`]: OIDC discovery with a cache.

pub mod assertion;
pub mod certificate;
pub mod client;
pub mod config;
pub mod discovery;
pub mod error;
pub mod request;
pub mod response;
pub mod transport;
pub mod vocabulary;

pub use client::{Acquired, Flow, TokenClient};
pub use config::{Credentials, Endpoint, TokenRequestConfig};
pub use error::{ErrorKind, TokenError};
pub use response::Token;
pub use transport::{EndpointPolicy, TransportSettings};
pub use vocabulary::{ClientAuthentication, GrantType, RequestEncoding, SigningAlgorithm};
