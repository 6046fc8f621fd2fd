//! The virtual node (DESIGN §5): pure translation of pods to provider requests, pricing and
//! `explain-pod`, and (to come) the node itself.

pub mod explain;
pub mod fargate;

/// What the `vk-node` subcommand says until the node lands.
pub const NOT_IMPLEMENTED: &str = "the virtual node is not implemented yet; it comes with issue 4 (virtual node with the Fargate provider)";
