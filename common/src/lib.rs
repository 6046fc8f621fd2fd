//! Pieces every Spillway component shares: annotation keys, the operator config, telemetry,
//! the admin HTTP server, TLS serving with live certificate reload, and shutdown signalling.

pub mod admin;
pub mod config;
pub mod conn_limits;
pub mod cost;
pub mod eligibility;
pub mod fargate_sizing;
pub mod file_watch;
pub mod keys;
pub mod kube_access;
pub mod label;
pub mod leader;
pub mod limited_server;
pub mod pki;
pub mod pod_resources;
pub mod quantity;
pub mod shutdown;
pub mod taint;
pub mod telemetry;
pub mod time;
pub mod tls;
