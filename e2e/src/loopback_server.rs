//! An axum app served on a free loopback port until dropped: what the test bed's fakes
//! (ARM, Session Manager) run on.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

/// The running server; stops (gracefully) when dropped.
pub struct LoopbackServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl LoopbackServer {
    /// Serves `app` on `127.0.0.1:0`.
    pub async fn start(app: axum::Router) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { until.cancelled().await })
                .await;
        });
        Ok(Self { addr, stop })
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
