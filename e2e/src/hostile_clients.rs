//! Clients that hold a TLS server's resources without asking anything of it: connections
//! that finish the handshake and then say nothing, and slowloris clients that send a
//! header byte every 500 ms and never end their headers. The webhook e2e test and the
//! pod-create benchmark put them in front of `spillway webhook` while the apiserver calls it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

/// How often a slow client sends one more header byte.
pub const TRICKLE_INTERVAL: Duration = Duration::from_millis(500);

/// A TLS connection to `127.0.0.1:port` that trusts `ca_pem`.
pub async fn tls_connection(port: u16, ca_pem: &str) -> anyhow::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    Ok(connector.connect("127.0.0.1".try_into()?, tcp).await?)
}

/// Idle and slow connections held open until dropped (or, for the slow ones, until the
/// server cuts them off).
pub struct HostileClients {
    idle: Vec<TlsStream<TcpStream>>,
    slow: Vec<JoinHandle<Duration>>,
}

impl HostileClients {
    /// Opens `idle` idle connections and `slow` slowloris clients to the server.
    pub async fn open(port: u16, ca_pem: &str, idle: usize, slow: usize) -> anyhow::Result<Self> {
        let mut idle_streams = Vec::with_capacity(idle);
        for _ in 0..idle {
            idle_streams.push(tls_connection(port, ca_pem).await?);
        }
        let mut slow_clients = Vec::with_capacity(slow);
        for _ in 0..slow {
            let stream = tls_connection(port, ca_pem).await?;
            slow_clients.push(tokio::spawn(trickle_headers(stream)));
        }
        Ok(Self {
            idle: idle_streams,
            slow: slow_clients,
        })
    }

    /// How many idle connections are held.
    pub fn idle_count(&self) -> usize {
        self.idle.len()
    }

    /// Waits for every slow client to be cut off by the server (or to give up after 100
    /// bytes, 50 s) and returns how long each lasted.
    pub async fn slow_client_lifetimes(mut self) -> anyhow::Result<Vec<Duration>> {
        let slow = std::mem::take(&mut self.slow);
        let mut lifetimes = Vec::with_capacity(slow.len());
        for client in slow {
            lifetimes.push(client.await?);
        }
        Ok(lifetimes)
    }
}

impl Drop for HostileClients {
    fn drop(&mut self) {
        for client in &self.slow {
            client.abort();
        }
    }
}

/// Sends a request line, then one header byte per [`TRICKLE_INTERVAL`] without ever
/// ending the headers, until the server answers or closes. Returns how long it lasted.
async fn trickle_headers(stream: TlsStream<TcpStream>) -> Duration {
    let (mut read, mut write) = tokio::io::split(stream);
    let started = Instant::now();
    let trickle = async {
        write.write_all(b"POST /mutate HTTP/1.1\r\n").await?;
        for byte in b"X-Slow: ".iter().cycle().take(100) {
            tokio::time::sleep(TRICKLE_INTERVAL).await;
            write.write_all(&[*byte]).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    let mut buffer = [0u8; 256];
    tokio::select! {
        _ = trickle => {}
        _ = read.read(&mut buffer) => {}
    }
    started.elapsed()
}
