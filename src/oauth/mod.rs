//! Token acquisition: everything between a token request's configuration and an access
//! token, with no knowledge of Kubernetes. The controller, `tokensync fetch` and the agent
//! all drive this module; nothing here may import kube.

pub mod vocabulary;

pub use vocabulary::{ClientAuthentication, GrantType, RequestEncoding, SigningAlgorithm};
