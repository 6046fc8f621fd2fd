//! The Spillway controller (DESIGN §4): the other half of the loop. It keeps the same
//! index and decision as the webhook (`spillway-cluster`), and while it leads it makes
//! burst pods go first on scale-in, moves them back when capacity returns (only when the
//! webhook would admit the replacement local), lets long-unschedulable pods spill onto
//! the virtual node, corrects cap overshoot, exports the burst metrics and writes
//! aggregated Events. It also runs the embedded virtual nodes.

pub mod backfill;
pub mod execute;
pub mod metrics;
pub mod plan;
pub mod pod_store;
pub mod run;
pub mod snapshot;
pub mod status;
pub mod status_cli;

pub use run::{ControllerArgs, RunError, run};
