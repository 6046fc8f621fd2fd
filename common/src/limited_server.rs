//! One accept loop for every server Spillway runs (the webhook, the kubelet API, the
//! admin port), within [`ConnLimits`]: a connection cap and a per-source share, a
//! first-request deadline, header and idle timeouts, HTTP/2 keep-alive and stream
//! limits, and a bounded drain at shutdown. What a connection goes through before HTTP
//! (a TLS handshake, or nothing) is the caller's `upgrade`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn_limits::{AcceptBackoff, ConnLimits, IdleTimeout, PerSource};

/// Serves `app` on `listener` until `shutdown`: each accepted connection is passed to
/// `upgrade` (which may refuse it with `None`, or hand back the stream to speak HTTP on
/// and the router for it), then served within `limits`. At `shutdown` it stops
/// accepting, lets requests in flight finish (up to the drain timeout) and returns.
pub async fn serve<U, F, S>(
    listener: TcpListener,
    limits: ConnLimits,
    app: Router,
    upgrade: U,
    shutdown: CancellationToken,
) where
    U: Fn(TcpStream, SocketAddr, Router) -> F + Send + Sync + 'static,
    F: Future<Output = Option<(S, Router)>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = Arc::new(limits);
    let upgrade = Arc::new(upgrade);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let per_source = Arc::new(PerSource::default());
    let connections = TaskTracker::new();
    let mut backoff = AcceptBackoff::default();
    loop {
        // At the connection cap, wait for a slot before accepting: further clients wait
        // in the listen backlog instead of costing a task each.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => {
                    backoff.succeeded();
                    pair
                }
                Err(error) => {
                    let wait = backoff.failed();
                    tracing::warn!(%error, ?wait, "accept failed; backing off");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            },
        };
        // One source may not hold every slot: beyond its share, closed at once.
        let Some(source_slot) =
            per_source.take(peer.ip(), limits.max_connections_per_source.max(1))
        else {
            tracing::debug!(%peer, "connection closed: its source holds its share of connections");
            drop(stream);
            continue;
        };
        // Small request/response exchanges must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let (upgrade, app) = (upgrade.clone(), app.clone());
        let (shutdown, limits) = (shutdown.clone(), limits.clone());
        connections.spawn(async move {
            let _permit = permit;
            let _source_slot = source_slot;
            let Some((stream, app)) = upgrade(stream, peer, app).await else {
                return;
            };
            serve_connection(stream, peer, app, &limits, &shutdown).await;
        });
    }
    connections.close();
    let _ = tokio::time::timeout(limits.drain_timeout, connections.wait()).await;
}

/// Speaks HTTP/1 or HTTP/2 on one connection until it ends, its first request is late,
/// or the drain after `shutdown` runs out.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    app: Router,
    limits: &ConnLimits,
    shutdown: &CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Notes the first request, for the first-request deadline.
    let asked = Arc::new(AtomicBool::new(false));
    let noted = asked.clone();
    let app = app.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            noted.store(true, Ordering::Relaxed);
            next.run(request)
        },
    ));
    let service = TowerToHyperService::new(app);
    let io = TokioIo::new(IdleTimeout::new(stream, limits.idle_timeout));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.max_pending_reset_streams)
        .max_local_error_reset_streams(limits.max_pending_reset_streams)
        .keep_alive_interval(Some(limits.http2_keep_alive))
        .keep_alive_timeout(limits.http2_keep_alive);
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let first_request_due = tokio::time::sleep(limits.first_request_timeout);
    tokio::pin!(first_request_due);
    let mut waiting_for_first = true;
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            _ = &mut first_request_due, if waiting_for_first => {
                waiting_for_first = false;
                if !asked.load(Ordering::Relaxed) {
                    tracing::debug!(%peer, "no request within the first-request deadline; closing");
                    return;
                }
            }
            _ = shutdown.cancelled() => {
                // Finish what is in flight, take nothing new.
                connection.as_mut().graceful_shutdown();
                match tokio::time::timeout(limits.drain_timeout, connection.as_mut()).await {
                    Ok(result) => break result,
                    Err(_) => return,
                }
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, %peer, "connection ended with an error");
    }
}
