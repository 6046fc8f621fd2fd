//! HTTPS serving for axum routers with certificates read from PEM files and reloaded when
//! the files change. A new pair that fails to load keeps the old one serving.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How often certificate files are checked for changes. Kubernetes updates mounted
/// Secrets within about a minute, so a few seconds is plenty.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// Installs ring as the process-wide rustls crypto provider. Needed once per process
/// because the AWS SDK links a second provider and rustls then refuses to guess.
pub fn install_crypto_provider() {
    // An Err only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM file held nothing usable.
    #[error("{path}: {what}")]
    ParsePem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// rustls refused the certificate, key or CA.
    #[error("TLS configuration refused: {0}")]
    Configure(String),
}

/// Where a server's certificate, key and (optionally) client CA live.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed.
    pub client_ca: Option<PathBuf>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::ReadFile {
        path: path.to_owned(),
        source,
    })
}

/// Loads a certificate chain and key from PEM files into a signing key for rustls.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::ParsePem {
            path: cert.to_owned(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::ParsePem {
            path: cert.to_owned(),
            what: "no certificate found".into(),
        });
    }
    let private_key = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| TlsError::ParsePem {
            path: key.to_owned(),
            what: e.to_string(),
        })?
        .ok_or_else(|| TlsError::ParsePem {
            path: key.to_owned(),
            what: "no private key found".into(),
        })?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(certs, private_key, &provider)
        .map_err(|e| TlsError::Configure(e.to_string()))?;
    Ok(certified)
}

/// A certificate resolver whose key pair can be swapped while connections are served.
#[derive(Debug)]
pub struct ReloadingCert {
    current: ArcSwap<CertifiedKey>,
}

impl ReloadingCert {
    /// Starts with `key`.
    pub fn new(key: CertifiedKey) -> Self {
        Self {
            current: ArcSwap::from_pointee(key),
        }
    }

    /// Replaces the served key pair.
    pub fn replace(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Builds a rustls server config serving `resolver`, requiring client certificates signed
/// by `client_ca` when one is given.
pub fn server_config(
    resolver: Arc<ReloadingCert>,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Configure(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut read(path)?.as_slice()) {
                let cert = cert.map_err(|e| TlsError::ParsePem {
                    path: path.to_owned(),
                    what: e.to_string(),
                })?;
                roots
                    .add(cert)
                    .map_err(|e| TlsError::Configure(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Configure(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Polls the certificate files every `interval` and swaps in a new pair when either file
/// changed and the pair loads; a pair that fails to load is logged and the old one stays.
pub async fn watch_and_reload(
    files: TlsFiles,
    resolver: Arc<ReloadingCert>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let paths = vec![files.cert.clone(), files.key.clone()];
    crate::file_watch::on_change(paths, interval, shutdown, move || match load_certified_key(
        &files.cert,
        &files.key,
    ) {
        Ok(key) => {
            resolver.replace(key);
            tracing::info!(cert = %files.cert.display(), "serving certificate reloaded");
            true
        }
        Err(error) => {
            tracing::error!(%error, "new serving certificate refused; the old one keeps serving");
            false
        }
    })
    .await
}

/// A TLS listener bound and ready to serve.
pub struct TlsServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    resolver: Arc<ReloadingCert>,
    files: TlsFiles,
}

impl TlsServer {
    /// Loads the files and binds `addr`.
    pub async fn bind(addr: SocketAddr, files: TlsFiles) -> Result<Self, TlsBindError> {
        let key = load_certified_key(&files.cert, &files.key)?;
        let resolver = Arc::new(ReloadingCert::new(key));
        let config = server_config(resolver.clone(), files.client_ca.as_deref())?;
        let listener = TcpListener::bind(addr).await.map_err(TlsBindError::Bind)?;
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            resolver,
            files,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `app` until `shutdown`, reloading certificates every `reload_interval`.
    pub async fn serve(self, app: Router, reload_interval: Duration, shutdown: CancellationToken) {
        tokio::spawn(watch_and_reload(
            self.files.clone(),
            self.resolver.clone(),
            reload_interval,
            shutdown.clone(),
        ));
        let service = TowerToHyperService::new(app);
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        continue;
                    }
                },
            };
            // Small request/response exchanges must not wait for Nagle's algorithm.
            let _ = stream.set_nodelay(true);
            let acceptor = self.acceptor.clone();
            let service = service.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(stream).await {
                    Ok(tls) => tls,
                    Err(error) => {
                        tracing::debug!(%error, %peer, "TLS handshake failed");
                        return;
                    }
                };
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                tokio::pin!(connection);
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%error, %peer, "connection ended with an error");
                        }
                    }
                    _ = shutdown.cancelled() => connection.as_mut().graceful_shutdown(),
                }
            });
        }
    }
}

/// Why a TLS server could not start.
#[derive(Debug, thiserror::Error)]
pub enum TlsBindError {
    /// The certificate material was unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The address could not be bound.
    #[error("cannot bind: {0}")]
    Bind(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki;

    async fn fetch(addr: SocketAddr, ca_pem: &str) -> Result<String, reqwest::Error> {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap();
        client
            .get(format!("https://{addr}/"))
            .send()
            .await?
            .text()
            .await
    }

    async fn wait_for_ca(addr: SocketAddr, ca_pem: &str) -> bool {
        for _ in 0..100 {
            if fetch(addr, ca_pem).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn certificate_rotates_and_a_bad_pair_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: None,
        };
        let first = pki::issue(&["127.0.0.1"]);
        std::fs::write(&files.cert, &first.cert_pem).unwrap();
        std::fs::write(&files.key, &first.key_pem).unwrap();
        let server = TlsServer::bind("127.0.0.1:0".parse().unwrap(), files.clone())
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let app = Router::new().route("/", axum::routing::get(|| async { "hello" }));
        tokio::spawn(server.serve(app, Duration::from_millis(20), shutdown.clone()));

        assert_eq!(fetch(addr, &first.ca_pem).await.unwrap(), "hello");

        let second = pki::issue(&["127.0.0.1"]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        std::fs::write(&files.cert, &second.cert_pem).unwrap();
        std::fs::write(&files.key, &second.key_pem).unwrap();
        assert!(
            wait_for_ca(addr, &second.ca_pem).await,
            "new certificate never served"
        );
        assert!(
            fetch(addr, &first.ca_pem).await.is_err(),
            "old certificate still served"
        );

        // A broken pair is refused; the second certificate keeps serving.
        std::fs::write(&files.cert, "not a certificate").unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(fetch(addr, &second.ca_pem).await.unwrap(), "hello");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn client_certificate_required_when_a_ca_is_configured() {
        let dir = tempfile::tempdir().unwrap();
        let server_pki = pki::issue(&["127.0.0.1"]);
        let client_pki = pki::issue(&["client"]);
        std::fs::write(dir.path().join("tls.crt"), &server_pki.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), &server_pki.key_pem).unwrap();
        std::fs::write(dir.path().join("ca.crt"), &client_pki.ca_pem).unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: Some(dir.path().join("ca.crt")),
        };
        let server = TlsServer::bind("127.0.0.1:0".parse().unwrap(), files)
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let app = Router::new().route("/", axum::routing::get(|| async { "hello" }));
        tokio::spawn(server.serve(app, Duration::from_secs(60), shutdown.clone()));

        assert!(
            fetch(addr, &server_pki.ca_pem).await.is_err(),
            "anonymous client accepted"
        );
        let identity = reqwest::Identity::from_pem(
            format!("{}{}", client_pki.cert_pem, client_pki.key_pem).as_bytes(),
        )
        .unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(server_pki.ca_pem.as_bytes()).unwrap(),
            )
            .identity(identity)
            .build()
            .unwrap();
        let body = client
            .get(format!("https://{addr}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "hello");
        shutdown.cancel();
    }
}
