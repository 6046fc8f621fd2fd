//! A loopback server for burst pods' probes on the test bed.

/// An HTTP server on loopback answering `/ready` and `/live` with the statuses the test
/// sets: the probes of burst pods on the test bed (the mock's with `--mock-probe-loopback`,
/// Fargate's with the fault proxy giving tasks a loopback IP). Stops with the test's
/// runtime.
pub struct ProbeTarget {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    ready: std::sync::Arc<std::sync::atomic::AtomicU16>,
    live: std::sync::Arc<std::sync::atomic::AtomicU16>,
}

impl ProbeTarget {
    /// Starts it: `/ready` answers 500 and `/live` 200 until told otherwise.
    pub async fn start() -> anyhow::Result<Self> {
        use std::sync::atomic::{AtomicU16, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let ready = std::sync::Arc::new(AtomicU16::new(500));
        let live = std::sync::Arc::new(AtomicU16::new(200));
        let (r, l) = (ready.clone(), live.clone());
        let app = axum::Router::new()
            .route(
                "/ready",
                axum::routing::get(move || async move {
                    axum::http::StatusCode::from_u16(r.load(Ordering::Relaxed))
                        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
                }),
            )
            .route(
                "/live",
                axum::routing::get(move || async move {
                    axum::http::StatusCode::from_u16(l.load(Ordering::Relaxed))
                        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { port, ready, live })
    }

    /// What `/ready` answers from now on.
    pub fn set_ready(&self, status: u16) {
        self.ready
            .store(status, std::sync::atomic::Ordering::Relaxed);
    }

    /// What `/live` answers from now on.
    pub fn set_live(&self, status: u16) {
        self.live
            .store(status, std::sync::atomic::Ordering::Relaxed);
    }
}
