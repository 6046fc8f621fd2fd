//! Polling for changed files (mounted ConfigMaps and Secrets change by symlink swap, which
//! polling modification times sees reliably).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

fn stamps(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Calls `reload` whenever the modification time of any of `paths` changes, checking every
/// `interval` until `shutdown`. When `reload` returns false the change is offered again on
/// the next tick (a pair of files may be half written).
pub async fn on_change(
    paths: Vec<PathBuf>,
    interval: Duration,
    shutdown: CancellationToken,
    mut reload: impl FnMut() -> bool,
) {
    let mut seen = stamps(&paths);
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = stamps(&paths);
        if now != seen && reload() {
            seen = now;
        }
    }
}
