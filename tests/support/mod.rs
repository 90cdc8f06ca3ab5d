//! Shared test support. Include from an integration test with `mod support;`.
//!
//! Every test binary compiles this whole tree but uses only part of it.
#![allow(dead_code)]

pub mod apiserver;
pub mod child_server;
pub mod control_plane;
pub mod controller;
pub mod oidc_provider;
pub mod real;
