//! Azure Container Instances: one container group per pod through the ARM REST API
//! (api-version 2023-05-01; the official spec is vendored in `vk-node/tests/aci-spec/`).
//! The API's types and the pod → container-group translation (which `spillway
//! explain-pod --provider aci` prints) are pure; the ARM client, its credentials and the
//! provider make the calls.

pub mod arm;
pub mod arm_types;
pub mod cluster_lookup;
pub mod credentials;
pub mod provider;
pub mod session_pump;
pub mod status;
pub mod translate;

/// The ARM API version every request names.
pub const API_VERSION: &str = "2023-05-01";

/// Tag keys on every container group the node creates (its adoption and sweeps read
/// them, as the Fargate node reads its task tags).
pub const TAG_POD_UID: &str = "spillway.io-pod-uid";
/// Namespace of the pod.
pub const TAG_NAMESPACE: &str = "spillway.io-namespace";
/// Name of the pod.
pub const TAG_POD_NAME: &str = "spillway.io-pod-name";
/// The virtual node.
pub const TAG_NODE: &str = "spillway.io-node";
/// The Kubernetes cluster's id.
pub const TAG_CLUSTER: &str = "spillway.io-cluster";
