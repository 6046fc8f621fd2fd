//! What an HTTPS server of ours allows one client: how long a TLS handshake, a request's
//! headers and an idle connection may take, how many connections and HTTP/2 streams it
//! holds, and how it backs off when accepting fails. Hostile or broken clients (slowloris,
//! connection floods, HTTP/2 rapid reset) then cost bounded memory and never starve the
//! apiserver's own calls.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Limits of one server.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// A TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// An HTTP/1 request's headers must arrive within this.
    pub header_read_timeout: Duration,
    /// A connection with no byte read or written for this long is closed.
    pub idle_timeout: Duration,
    /// Connections held at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Connections one source address may hold at once; beyond it a new one is closed at
    /// once, so one client cannot take every slot of [`Self::max_connections`].
    pub max_connections_per_source: usize,
    /// A connection must send its first request within this (an HTTP/2 client that opens
    /// a connection and never a stream is closed then, not after the idle timeout).
    pub first_request_timeout: Duration,
    /// HTTP/2 keep-alive: a PING after this much silence, the connection closed when its
    /// answer does not come within the same time (a peer that vanished is noticed).
    pub http2_keep_alive: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset before they were served, per connection
    /// (the "rapid reset" attack), after which the connection is closed.
    pub max_pending_reset_streams: usize,
    /// On shutdown, how long in-flight requests may take to finish.
    pub drain_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: 4096,
            max_connections_per_source: 1024,
            first_request_timeout: Duration::from_secs(10),
            http2_keep_alive: Duration::from_secs(30),
            max_concurrent_streams: 256,
            max_pending_reset_streams: 32,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Connections held per source address, within a cap.
#[derive(Debug, Default)]
pub struct PerSource {
    held: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One connection counted against its source; released when dropped.
#[derive(Debug)]
pub struct SourceSlot {
    sources: std::sync::Arc<PerSource>,
    source: std::net::IpAddr,
}

impl PerSource {
    /// A slot for one more connection from `source`, unless it holds `cap` already.
    pub fn take(
        self: &std::sync::Arc<Self>,
        source: std::net::IpAddr,
        cap: usize,
    ) -> Option<SourceSlot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(source).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            sources: self.clone(),
            source,
        })
    }

    /// Connections `source` holds now.
    pub fn held(&self, source: std::net::IpAddr) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(&source).copied().unwrap_or(0)
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut held = self.sources.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.source);
            }
        }
    }
}

/// Back-off after a failed `accept` (out of file descriptors, say): 10 ms doubling to 1 s,
/// so a persistent error does not spin a core.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    /// The wait after one more failure.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        Duration::from_millis(10)
            .saturating_mul(1 << self.failures.min(7))
            .min(Duration::from_secs(1))
    }

    /// An accept succeeded.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

/// An I/O stream that fails with `TimedOut` once nothing was read or written for the idle
/// timeout, which ends the connection serving it.
pub struct IdleTimeout<T> {
    inner: T,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<T> IdleTimeout<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    fn touch(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.timeout);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn idle() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle too long")
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(result)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                self.touch();
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle())),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn accept_backoff_doubles_up_to_a_second_and_resets() {
        let mut backoff = AcceptBackoff::default();
        let waits: Vec<u128> = (0..10).map(|_| backoff.failed().as_millis()).collect();
        assert_eq!(waits, [20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000]);
        backoff.succeeded();
        assert_eq!(backoff.failed(), Duration::from_millis(20));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_stream_times_out_and_an_active_one_does_not() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = IdleTimeout::new(server, Duration::from_secs(5));
        let mut client = client;
        // Bytes every 3 s keep it alive past the 5 s timeout.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            client.write_all(b"x").await.unwrap();
            let mut byte = [0u8; 1];
            server.read_exact(&mut byte).await.unwrap();
        }
        // Silence: the read fails once 5 s passed.
        let mut byte = [0u8; 1];
        let error = server.read(&mut byte).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }
}
