//! A TLS proxy of the tests' own that stands in for a Service in front of two webhook
//! replicas: it serves HTTP/1.1 only, so the apiserver opens one connection per
//! concurrent admission request, and it hands each new connection to the next backend in
//! turn, re-encrypting the byte stream towards it. No HTTP is parsed. Answers can be held
//! back a little, as a busy replica's would be, so that concurrent requests cannot share
//! one connection and always spread over both backends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

/// One backend: where it listens and the CA that signed its certificate.
pub struct Backend {
    /// `127.0.0.1:PORT`.
    pub addr: SocketAddr,
    /// PEM of its CA.
    pub ca_pem: String,
}

/// The running proxy; stops when dropped.
pub struct SplitProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    /// PEM of the CA that signed its own certificate (the registration's `caBundle`).
    pub ca_pem: String,
    /// Connections handed to each backend so far.
    pub connections: Arc<Vec<AtomicUsize>>,
    stop: CancellationToken,
}

impl Drop for SplitProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Copies bytes both ways until either side closes, holding back what the backend sends.
async fn relay<A, B>(inbound: A, outbound: B, answer_delay: Duration) -> std::io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut from_client, mut to_client) = tokio::io::split(inbound);
    let (mut from_backend, mut to_backend) = tokio::io::split(outbound);
    let requests = async {
        tokio::io::copy(&mut from_client, &mut to_backend).await?;
        to_backend.shutdown().await
    };
    let answers = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = from_backend.read(&mut buffer).await?;
            if n == 0 {
                return to_client.shutdown().await;
            }
            tokio::time::sleep(answer_delay).await;
            to_client.write_all(&buffer[..n]).await?;
        }
    };
    tokio::try_join!(requests, answers).map(|_| ())
}

fn certs(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    Ok(CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>()?)
}

impl SplitProxy {
    /// Starts a proxy on a free loopback port in front of `backends`, holding back every
    /// chunk of a backend's answer by `answer_delay`.
    pub async fn start(backends: Vec<Backend>, answer_delay: Duration) -> anyhow::Result<Self> {
        spillway_common::tls::install_crypto_provider();
        let own = spillway_common::pki::issue(&["127.0.0.1"]);
        let key = PrivateKeyDer::from_pem_slice(own.key_pem.as_bytes()).context("proxy key")?;
        let mut server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs(&own.cert_pem)?, key)?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(server));
        let mut connectors = Vec::new();
        for backend in &backends {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(&backend.ca_pem)? {
                roots.add(cert)?;
            }
            let mut client = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            client.alpn_protocols = vec![b"http/1.1".to_vec()];
            connectors.push((backend.addr, TlsConnector::from(Arc::new(client))));
        }
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let stop = CancellationToken::new();
        let (counts, stopped) = (connections.clone(), stop.clone());
        tokio::spawn(async move {
            let next = AtomicUsize::new(0);
            loop {
                let accepted = tokio::select! {
                    _ = stopped.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((inbound, _)) = accepted else { continue };
                let turn = next.fetch_add(1, Ordering::SeqCst) % connectors.len();
                counts[turn].fetch_add(1, Ordering::SeqCst);
                let (backend, connector) = connectors[turn].clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(inbound) = acceptor.accept(inbound).await else {
                        return;
                    };
                    let Ok(tcp) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let name = ServerName::IpAddress(backend.ip().into());
                    let Ok(outbound) = connector.connect(name, tcp).await else {
                        return;
                    };
                    let _ = relay(inbound, outbound, answer_delay).await;
                });
            }
        });
        Ok(Self {
            addr,
            ca_pem: own.ca_pem,
            connections,
            stop,
        })
    }
}
