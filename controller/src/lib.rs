//! The Spillway controller (DESIGN §4). Not built yet: the `controller` subcommand says so
//! and exits 2 rather than pretend.

/// The issue that brings the controller.
pub const NOT_IMPLEMENTED: &str = "the controller (scale-in order, rebalance, pending spill) is not implemented yet; it comes with the controller issue after the virtual node (issue 4)";
