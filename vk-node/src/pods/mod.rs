//! The pod lifecycle of a virtual node: pods bound to it are created at the provider,
//! their status is synced in batches, `restartPolicy` is honoured, deleted pods are stopped
//! and removed, and on start the node adopts what exists, stops orphans and creates what is
//! missing, so a restart neither duplicates nor leaks a provider object.
//!
//! The rules are data ([`lifecycle`], [`health`]): a pod's record, what the provider
//! said and the time go in; the record changes and effects come out. The
//! [`controller`] watches the pods, calls the provider and carries the effects out.

pub mod controller;
pub mod health;
pub mod lifecycle;
pub mod prober;
pub mod probes;

pub use controller::{
    ADOPT_RETRY_INTERVAL, ControllerSettings, FRESH_SYNC_INTERVAL, PodController, PodDirectory,
};
