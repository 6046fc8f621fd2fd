//! The virtual node (DESIGN §5): registers a Node, runs its pods at a provider (AWS
//! Fargate through ECS, or the in-memory mock), syncs their status, and serves the kubelet
//! API (logs, pod listings, stats and resource metrics). The pure parts (translation, sizing, status mapping) have no I/O.

pub mod aci;
pub mod admission;
pub mod cluster_id;
pub mod env;
pub mod env_refs;
pub mod explain;
pub mod fargate;
pub mod kubelet_api;
pub mod kubelet_authn;
pub mod kubelet_authz;
pub mod metrics;
pub mod mock;
pub mod mock_exec;
pub mod node;
pub mod pod_objects;
pub mod pods;
pub mod provider;
pub mod resource_usage;
pub mod run;
pub mod session_socket;
pub mod status;
pub mod workload_rules;
