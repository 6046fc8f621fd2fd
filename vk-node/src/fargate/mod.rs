//! The AWS Fargate (ECS) provider: sizing, translation to ECS requests, and (below) the
//! calls themselves.

pub mod aws;
pub mod ec2_query;
pub mod ecs_json;
pub mod exec_session;
pub mod provider;
pub mod region;
pub mod setup_check;
pub mod ssm_message;
pub mod translate;

/// Tag carrying the pod UID on every task (crash-safe adoption keys on it).
pub const TAG_POD_UID: &str = "spillway.io/pod-uid";
/// Tag carrying `namespace/name` of the pod.
pub const TAG_POD: &str = "spillway.io/pod";
/// Tag carrying the virtual node's name.
pub const TAG_NODE: &str = "spillway.io/node";
/// Tag carrying the cluster id (`--cluster-id`): two clusters sharing an ECS cluster and
/// an account never touch each other's tasks or secrets.
pub const TAG_CLUSTER: &str = "spillway.io/cluster-id";
