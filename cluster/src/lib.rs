//! The core both the webhook and the controller use (DESIGN §3 "State", §4): the pure
//! burst decision and workload policy at the bottom, the compact index of the cluster that
//! implements the decision's capacity view above them, and the watches that feed it. No
//! HTTP lives here, so the controller asks the webhook's own question with the same code.

pub mod cluster_state;
pub mod constraints;
pub mod decision;
pub mod index;
pub mod policy;
pub mod watch;
