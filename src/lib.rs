//! tokensync keeps short-lived OAuth2 access tokens fresh in Kubernetes Secrets.
//!
//! The Kubernetes-free core is [`oauth`] (token acquisition), [`schedule`] (when to request
//! a token) and [`render`] (the target Secret's data); [`api`] holds the
//! `ClientCredential` resource and its validation.
#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod api;
pub mod controller;
pub mod engine_args;
pub mod fetch;
pub mod manifest;
pub mod metrics;
pub mod oauth;
pub mod ops;
pub mod render;
pub mod schedule;
pub mod telemetry;
pub mod token_state;
