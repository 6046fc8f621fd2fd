//! HTTPS serving for axum routers with certificates read from PEM files and reloaded when
//! the files change. A new pair that fails to load keeps the old one serving.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::conn_limits::ConnLimits;
use crate::limited_server;

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

/// Whether a server with a client CA refuses clients that present no certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientCerts {
    /// A certificate the client CA signed is required to connect.
    #[default]
    Required,
    /// A client may connect without one (and authenticate another way, such as a bearer
    /// token); one it does present must verify against the client CA.
    Optional,
}

/// Builds a rustls server config serving `resolver`, verifying client certificates against
/// `client_ca` when one is given (and requiring them when `client_certs` says so).
pub fn server_config(
    resolver: Arc<ReloadingCert>,
    client_ca: Option<&Path>,
    client_certs: ClientCerts,
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
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match client_certs {
                ClientCerts::Required => verifier,
                ClientCerts::Optional => verifier.allow_unauthenticated(),
            }
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

/// Who a client certificate says the caller is (the subject's common name and
/// organizations, as Kubernetes reads them: user name and groups). Handlers of a server
/// that requires client certificates find it in the request's extensions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// Subject CN.
    pub name: String,
    /// Subject O values.
    pub groups: Vec<String>,
}

impl ClientIdentity {
    /// Reads the identity from a DER certificate; `None` when it does not parse.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())?
            .to_owned();
        let groups = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_owned))
            .collect();
        Some(Self { name, groups })
    }
}

/// A TLS listener bound and ready to serve.
pub struct TlsServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    resolver: Arc<ReloadingCert>,
    files: TlsFiles,
    limits: ConnLimits,
}

impl TlsServer {
    /// Loads the files and binds `addr`; with a client CA, clients must present a
    /// certificate it signed.
    pub async fn bind(addr: SocketAddr, files: TlsFiles) -> Result<Self, TlsBindError> {
        Self::bind_with(addr, files, ClientCerts::Required).await
    }

    /// Loads the files and binds `addr`, requiring client certificates or not.
    pub async fn bind_with(
        addr: SocketAddr,
        files: TlsFiles,
        client_certs: ClientCerts,
    ) -> Result<Self, TlsBindError> {
        let key = load_certified_key(&files.cert, &files.key)?;
        let resolver = Arc::new(ReloadingCert::new(key));
        let config = server_config(resolver.clone(), files.client_ca.as_deref(), client_certs)?;
        let listener = TcpListener::bind(addr).await.map_err(TlsBindError::Bind)?;
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            resolver,
            files,
            limits: ConnLimits::default(),
        })
    }

    /// Serves under `limits` instead of the defaults.
    pub fn with_limits(mut self, limits: ConnLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `app` until `shutdown`, reloading certificates every `reload_interval`,
    /// within the server's [`ConnLimits`]. At `shutdown` it stops accepting, lets the
    /// requests in flight finish (up to the drain timeout) and returns.
    pub async fn serve(self, app: Router, reload_interval: Duration, shutdown: CancellationToken) {
        tokio::spawn(watch_and_reload(
            self.files.clone(),
            self.resolver.clone(),
            reload_interval,
            shutdown.clone(),
        ));
        let acceptor = self.acceptor.clone();
        let limits = self.limits.clone();
        let handshake_timeout = limits.handshake_timeout;
        let upgrade = move |stream: tokio::net::TcpStream, peer: SocketAddr, app: Router| {
            let acceptor = acceptor.clone();
            async move {
                let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
                let tls = match handshake.await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, %peer, "TLS handshake failed");
                        return None;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return None;
                    }
                };
                // A verified client certificate's identity travels with each request.
                let identity = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| ClientIdentity::from_der(leaf));
                let app = match identity {
                    Some(identity) => app.layer(axum::Extension(identity)),
                    None => app,
                };
                Some((tls, app))
            }
        };
        limited_server::serve(self.listener, limits, app, upgrade, shutdown).await;
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

    #[tokio::test]
    async fn optional_client_certificates_admit_anonymous_callers_without_an_identity() {
        let dir = tempfile::tempdir().unwrap();
        let server_pki = pki::issue(&["127.0.0.1"]);
        let client_pki = pki::issue(&["client"]);
        let stranger_pki = pki::issue(&["stranger"]);
        std::fs::write(dir.path().join("tls.crt"), &server_pki.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), &server_pki.key_pem).unwrap();
        std::fs::write(dir.path().join("ca.crt"), &client_pki.ca_pem).unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: Some(dir.path().join("ca.crt")),
        };
        let server =
            TlsServer::bind_with("127.0.0.1:0".parse().unwrap(), files, ClientCerts::Optional)
                .await
                .unwrap();
        let addr = server.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let app = Router::new().route(
            "/",
            axum::routing::get(|who: Option<axum::Extension<ClientIdentity>>| async move {
                who.map_or_else(|| "anonymous".to_owned(), |w| w.0.name)
            }),
        );
        tokio::spawn(server.serve(app, Duration::from_secs(60), shutdown.clone()));
        let call = |identity: Option<&pki::SelfMadePki>| {
            let mut builder = reqwest::Client::builder().add_root_certificate(
                reqwest::Certificate::from_pem(server_pki.ca_pem.as_bytes()).unwrap(),
            );
            if let Some(issued) = identity {
                builder = builder.identity(
                    reqwest::Identity::from_pem(
                        format!("{}{}", issued.cert_pem, issued.key_pem).as_bytes(),
                    )
                    .unwrap(),
                );
            }
            let client = builder.build().unwrap();
            async move {
                client
                    .get(format!("https://{addr}/"))
                    .send()
                    .await?
                    .text()
                    .await
            }
        };
        assert_eq!(call(None).await.unwrap(), "anonymous");
        // The self-made leaf's subject is rcgen's default; what matters is that it is read.
        assert_ne!(call(Some(&client_pki)).await.unwrap(), "anonymous");
        assert!(
            call(Some(&stranger_pki)).await.is_err(),
            "a certificate the client CA did not sign was accepted"
        );
        shutdown.cancel();
    }

    /// A server on loopback with `limits`, serving `/` ("hello") and `/slow` (300 ms).
    async fn limited_server(
        limits: ConnLimits,
    ) -> (
        SocketAddr,
        pki::SelfMadePki,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let issued = pki::issue(&["127.0.0.1"]);
        std::fs::write(dir.path().join("tls.crt"), &issued.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), &issued.key_pem).unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: None,
        };
        let server = TlsServer::bind("127.0.0.1:0".parse().unwrap(), files)
            .await
            .unwrap()
            .with_limits(limits);
        let addr = server.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let app = Router::new()
            .route("/", axum::routing::get(|| async { "hello" }))
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "slow"
                }),
            );
        let task = tokio::spawn(server.serve(app, Duration::from_secs(60), shutdown.clone()));
        // The files were read at bind; the directory may go with this function.
        drop(dir);
        (addr, issued, shutdown, task)
    }

    /// A TLS connection to `addr`, handshake done, as HTTP/1.1.
    async fn tls_connect(
        addr: SocketAddr,
        ca_pem: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        tls_connect_as(addr, ca_pem, b"http/1.1").await
    }

    /// A TLS connection to `addr`, handshake done, offering only `alpn`.
    async fn tls_connect_as(
        addr: SocketAddr,
        ca_pem: &str,
        alpn: &[u8],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let mut roots = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        connector
            .connect("127.0.0.1".try_into().unwrap(), tcp)
            .await
    }

    /// Whether the server closed the connection (EOF or error) within `within`.
    async fn closed_within<R: tokio::io::AsyncRead + Unpin>(
        stream: &mut R,
        within: Duration,
    ) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buffer = [0u8; 1024];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }

    fn short_limits() -> ConnLimits {
        ConnLimits {
            handshake_timeout: Duration::from_millis(300),
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(600),
            drain_timeout: Duration::from_secs(5),
            ..ConnLimits::default()
        }
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_handshake_is_dropped() {
        let (addr, _pki, shutdown, _task) = limited_server(short_limits()).await;
        // TCP only, and then silence.
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut tcp, Duration::from_secs(3)).await);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn slow_headers_and_idle_connections_are_closed() {
        use tokio::io::AsyncWriteExt;
        let (addr, pki, shutdown, _task) = limited_server(short_limits()).await;
        // Slowloris: a header byte every 100 ms keeps the connection from being idle, but
        // the headers never finish.
        let slow = tls_connect(addr, &pki.ca_pem).await.unwrap();
        let (mut slow_read, mut slow_write) = tokio::io::split(slow);
        let trickle = tokio::spawn(async move {
            slow_write.write_all(b"GET / HTTP/1.1\r\n").await?;
            for byte in b"X-Slow: ".iter().cycle().take(60) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                slow_write.write_all(&[*byte]).await?;
            }
            Ok::<_, std::io::Error>(())
        });
        assert!(
            closed_within(&mut slow_read, Duration::from_secs(3)).await,
            "slow headers kept"
        );
        trickle.abort();
        // One request answered, then the connection sits idle.
        let mut idle = tls_connect(addr, &pki.ca_pem).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buffer = [0u8; 512];
        let n = tokio::io::AsyncReadExt::read(&mut idle, &mut buffer)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&buffer[..n]).contains("hello"));
        assert!(
            closed_within(&mut idle, Duration::from_secs(3)).await,
            "idle connection kept"
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_for_a_free_slot() {
        let limits = ConnLimits {
            max_connections: 2,
            ..ConnLimits::default()
        };
        let (addr, pki, shutdown, _task) = limited_server(limits).await;
        let first = tls_connect(addr, &pki.ca_pem).await.unwrap();
        let _second = tls_connect(addr, &pki.ca_pem).await.unwrap();
        let third = tokio::spawn({
            let ca = pki.ca_pem.clone();
            async move { tls_connect(addr, &ca).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !third.is_finished(),
            "a third connection was served beyond the cap of 2"
        );
        drop(first);
        let served = tokio::time::timeout(Duration::from_secs(5), third).await;
        assert!(
            matches!(served, Ok(Ok(true))),
            "the third one is served once a slot frees"
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn one_source_holds_at_most_its_share_of_connections() {
        let limits = ConnLimits {
            max_connections: 16,
            max_connections_per_source: 2,
            ..ConnLimits::default()
        };
        let (addr, pki, shutdown, _task) = limited_server(limits).await;
        let first = tls_connect(addr, &pki.ca_pem).await.unwrap();
        let _second = tls_connect(addr, &pki.ca_pem).await.unwrap();
        // The third from the same address is closed at once, though slots are free.
        let third = tls_connect(addr, &pki.ca_pem).await;
        assert!(
            third.is_err(),
            "a third connection from one source was served"
        );
        drop(first);
        // Its share frees as its connections close.
        let mut again = None;
        for _ in 0..50 {
            if let Ok(tls) = tls_connect(addr, &pki.ca_pem).await {
                again = Some(tls);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(again.is_some(), "a freed share is served again");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_connection_that_never_asks_is_closed_at_the_first_request_deadline() {
        use tokio::io::AsyncWriteExt;
        let limits = ConnLimits {
            first_request_timeout: Duration::from_millis(300),
            ..ConnLimits::default()
        };
        let (addr, pki, shutdown, _task) = limited_server(limits).await;
        let mut silent = tls_connect(addr, &pki.ca_pem).await.unwrap();
        assert!(
            closed_within(&mut silent, Duration::from_secs(3)).await,
            "a connection that sent no request was kept past the deadline"
        );
        // One that asks at once is served and kept past it.
        let mut asking = tls_connect(addr, &pki.ca_pem).await.unwrap();
        asking
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buffer = [0u8; 512];
        let n = tokio::io::AsyncReadExt::read(&mut asking, &mut buffer)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&buffer[..n]).contains("hello"));
        tokio::time::sleep(Duration::from_millis(600)).await;
        asking
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let n = tokio::io::AsyncReadExt::read(&mut asking, &mut buffer)
            .await
            .unwrap();
        assert!(
            String::from_utf8_lossy(&buffer[..n]).contains("hello"),
            "a connection that asked was closed at the deadline"
        );
        shutdown.cancel();
    }

    type H2Client = h2::client::SendRequest<bytes::Bytes>;
    type H2Connection =
        h2::client::Connection<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

    /// An HTTP/2 connection to `addr` that has been answered one `GET /`, so the server's
    /// SETTINGS are in.
    async fn h2_connect(addr: SocketAddr, ca_pem: &str) -> (H2Client, H2Connection) {
        let tls = tls_connect_as(addr, ca_pem, b"h2").await.unwrap();
        let (client, mut connection) = h2::client::handshake(tls).await.unwrap();
        let mut client = client.ready().await.unwrap();
        let request = http::Request::get(format!("https://{addr}/"))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = tokio::select! {
            response = response => response.unwrap(),
            ended = &mut connection => panic!("the connection ended first: {ended:?}"),
        };
        assert_eq!(response.status(), 200);
        (client, connection)
    }

    /// Opens `count` streams and resets each at once, all written in one go (this test
    /// runs on one thread, so the connection only writes when it is polled after).
    async fn rapid_resets(client: &mut H2Client, count: usize) {
        for _ in 0..count {
            let request = http::Request::get("/").body(()).unwrap();
            let ready = client.clone().ready().await.unwrap();
            *client = ready;
            let (_, mut stream) = client.send_request(request, false).unwrap();
            stream.send_reset(h2::Reason::CANCEL);
        }
    }

    #[tokio::test]
    async fn http2_clients_get_the_stream_cap_and_rapid_resets_close_their_connection() {
        let limits = ConnLimits {
            max_concurrent_streams: 77,
            max_pending_reset_streams: 50,
            ..ConnLimits::default()
        };
        let (addr, pki, shutdown, _task) = limited_server(limits).await;
        let (mut client, mut connection) = h2_connect(addr, &pki.ca_pem).await;
        assert_eq!(
            connection.max_concurrent_send_streams(),
            77,
            "the server's SETTINGS_MAX_CONCURRENT_STREAMS"
        );

        // 40 resets before the server took them: within the limit of 50 (hyper's own default
        // is 20), so the connection still serves.
        rapid_resets(&mut client, 40).await;
        let request = http::Request::get("/").body(()).unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = tokio::select! {
            response = response => response.expect("served after 40 resets"),
            ended = &mut connection => panic!("closed after 40 resets: {ended:?}"),
        };
        assert_eq!(response.status(), 200);

        // 200 more in one go: the server sends GOAWAY and closes.
        rapid_resets(&mut client, 200).await;
        let ended = tokio::time::timeout(Duration::from_secs(5), connection)
            .await
            .expect("the server closes a rapid-reset connection");
        let error = ended.expect_err("closed with an error code");
        assert!(error.is_go_away() && error.is_remote(), "{error:?}");
        assert_eq!(error.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM));

        // Other clients are still served.
        assert_eq!(fetch(addr, &pki.ca_pem).await.unwrap(), "hello");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn shutdown_lets_requests_in_flight_finish() {
        let (addr, pki, shutdown, task) = limited_server(ConnLimits::default()).await;
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap();
        let request = tokio::spawn(async move {
            client
                .get(format!("https://{addr}/slow"))
                .send()
                .await?
                .text()
                .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        shutdown.cancel();
        assert_eq!(request.await.unwrap().unwrap(), "slow");
        // And the server is done once it drained.
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "still accepting"
        );
    }

    #[test]
    fn the_client_identity_is_the_subjects_cn_and_organizations() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver-kubelet-client");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:masters");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            ClientIdentity::from_der(cert.der()),
            Some(ClientIdentity {
                name: "kube-apiserver-kubelet-client".into(),
                groups: vec!["system:masters".into()],
            })
        );
        assert_eq!(ClientIdentity::from_der(b"not a certificate"), None);
    }
}
