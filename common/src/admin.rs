//! The admin HTTP server: `/livez`, `/readyz` and Prometheus `/metrics`, on a port of its
//! own so probes and scrapes never compete with admission traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Args;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;

use crate::conn_limits::ConnLimits;
use crate::limited_server;

/// Admin server flags shared by every long-running subcommand.
#[derive(Args, Clone, Debug)]
pub struct AdminArgs {
    /// Address of the admin server (`/livez`, `/readyz`, `/metrics`); plain HTTP, keep it
    /// on loopback or a pod-internal port.
    #[arg(long, default_value = "127.0.0.1:9090", env = "SPILLWAY_ADMIN_ADDR")]
    pub admin_addr: SocketAddr,
}

/// A readiness switch shared between the component and its `/readyz` probe.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the component ready (or not).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether the component said it is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    readiness: Readiness,
}

/// Builds the admin router; exposed so tests drive it in-process.
pub fn router(registry: Registry, readiness: Readiness) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState {
            registry,
            readiness,
        })
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = Vec::new();
    let encoder = TextEncoder::new();
    match encoder.encode(&state.registry.gather(), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            body,
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_owned())],
            error.to_string().into_bytes(),
        ),
    }
}

/// What one client may hold of the admin port: probes and scrapes are a few small
/// requests, so the caps are far below the TLS servers' and no source may take them all.
pub fn admin_limits() -> ConnLimits {
    ConnLimits {
        max_connections: 256,
        max_connections_per_source: 32,
        idle_timeout: Duration::from_secs(60),
        ..ConnLimits::default()
    }
}

/// Serves the admin router on `addr` until `shutdown` is cancelled, within
/// [`admin_limits`].
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_within(addr, registry, readiness, admin_limits(), shutdown).await
}

/// [`serve`] within `limits`.
pub async fn serve_within(
    addr: SocketAddr,
    registry: Registry,
    readiness: Readiness,
    limits: ConnLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "admin server listening");
    let plain = |stream: tokio::net::TcpStream, _: SocketAddr, app: Router| async move {
        Some((stream, app))
    };
    limited_server::serve(
        listener,
        limits,
        router(registry, readiness),
        plain,
        shutdown,
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Starts the admin server within `limits` on a free loopback port.
    async fn start(limits: ConnLimits) -> (SocketAddr, CancellationToken) {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let stop = CancellationToken::new();
        tokio::spawn(serve_within(
            addr,
            Registry::new(),
            Readiness::default(),
            limits,
            stop.clone(),
        ));
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return (addr, stop);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the admin server did not start");
    }

    /// Whether the server closes `stream` (EOF or reset) within 10 s.
    async fn closed(stream: &mut tokio::net::TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn one_source_cannot_take_every_admin_connection() {
        let (addr, stop) = start(ConnLimits {
            max_connections_per_source: 2,
            ..admin_limits()
        })
        .await;
        // The start-up probe's connection may still be held; let it go.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(closed(&mut third).await, "a third connection is closed");
        // A held one still answers.
        held[0]
            .write_all(b"GET /livez HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        held[0].read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        stop.cancel();
    }

    #[tokio::test]
    async fn an_admin_connection_that_never_asks_is_closed() {
        let (addr, stop) = start(ConnLimits {
            first_request_timeout: Duration::from_millis(300),
            ..admin_limits()
        })
        .await;
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(closed(&mut silent).await);
        stop.cancel();
    }

    #[tokio::test]
    async fn probes_and_metrics_answer() {
        let registry = Registry::new();
        let counter = prometheus::IntCounter::new("spillway_test_total", "a test counter").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc();
        let readiness = Readiness::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(registry, readiness.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();
        let get = |path: &str| client.get(format!("http://{addr}{path}")).send();

        assert_eq!(get("/livez").await.unwrap().status(), 200);
        assert_eq!(get("/readyz").await.unwrap().status(), 503);
        readiness.set(true);
        assert_eq!(get("/readyz").await.unwrap().status(), 200);
        let metrics = get("/metrics").await.unwrap().text().await.unwrap();
        assert!(metrics.contains("spillway_test_total 1"), "{metrics}");
    }
}
