//! tokensync keeps short-lived OAuth2 access tokens fresh in Kubernetes Secrets.
//!
//! The Kubernetes-free core is [`oauth`] (token acquisition); [`api`] holds the
//! `ClientCredential` resource and its validation.
#![forbid(unsafe_code)]

pub mod api;
pub mod fetch;
pub mod manifest;
pub mod oauth;
pub mod telemetry;
