//! Opening the WebSockets providers stream exec and attach sessions on (ACI's exec and
//! attach sockets, ECS Exec's Session Manager data channel): `wss://` with the public
//! roots, or `ws://` to a loopback address alone (the test bed's fakes), and the secret
//! that opens them where the provider wants it.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use azure_core::credentials::Secret;
use futures::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::provider::ProviderError;

/// How a secret opens the socket.
#[derive(Clone, Copy, Debug)]
pub enum Opening<'a> {
    /// Nothing at the WebSocket level (the protocol's first message carries it).
    Plain,
    /// Sent as the first message, as text (ACI exec).
    FirstMessage(&'a Secret),
    /// Sent as the `Authorization` header (ACI attach).
    AuthorizationHeader(&'a Secret),
}

/// Anything a WebSocket can run over: TCP, or TLS over it.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// An open session WebSocket.
pub type Socket = WebSocketStream<Box<dyn Transport>>;

fn tls() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

fn refused(what: &str) -> ProviderError {
    ProviderError::Invalid(format!("the provider's session WebSocket {what}"))
}

/// How long opening a socket (TCP, TLS, the WebSocket handshake) may take.
pub const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Opens the socket at `uri` as `opening` says, within [`OPEN_TIMEOUT`].
pub async fn open(uri: &str, opening: Opening<'_>) -> Result<Socket, ProviderError> {
    tokio::time::timeout(OPEN_TIMEOUT, open_now(uri, opening))
        .await
        .unwrap_or_else(|_| {
            Err(ProviderError::Transient(format!(
                "the provider's session WebSocket did not open within {OPEN_TIMEOUT:?}"
            )))
        })
}

async fn open_now(uri: &str, opening: Opening<'_>) -> Result<Socket, ProviderError> {
    let url = url::Url::parse(uri).map_err(|e| refused(&format!("is no URL: {e}")))?;
    let host = url
        .host_str()
        .ok_or_else(|| refused("names no host"))?
        .to_owned();
    let secure = match url.scheme() {
        "wss" => true,
        "ws" if host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()) =>
        {
            false
        }
        scheme => {
            return Err(refused(&format!(
                "uses {scheme}://; only wss:// is accepted (ws:// to loopback alone)"
            )));
        }
    };
    let port = url
        .port_or_known_default()
        .ok_or_else(|| refused("names no port"))?;
    let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| ProviderError::Transient(format!("session WebSocket {host}: {e}")))?;
    let transport: Box<dyn Transport> = if secure {
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| refused(&format!("host {host}: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(tls())
            .connect(name, tcp)
            .await
            .map_err(|e| ProviderError::Transient(format!("session WebSocket TLS: {e}")))?;
        Box::new(stream)
    } else {
        Box::new(tcp)
    };
    let mut request = uri
        .into_client_request()
        .map_err(|e| refused(&format!("request: {e}")))?;
    if let Opening::AuthorizationHeader(password) = opening {
        let value = HeaderValue::from_str(password.secret())
            .map_err(|_| refused("password is no header value"))?;
        request.headers_mut().insert("Authorization", value);
    }
    let (mut socket, _) = tokio_tungstenite::client_async(request, transport)
        .await
        .map_err(|e| ProviderError::Transient(format!("session WebSocket handshake: {e}")))?;
    if let Opening::FirstMessage(password) = opening {
        socket
            .send(Message::Text(password.secret().into()))
            .await
            .map_err(|e| ProviderError::Transient(format!("session WebSocket: {e}")))?;
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_wss_or_loopback_ws_is_opened() {
        for uri in [
            "ws://example.com/exec",
            "http://127.0.0.1/exec",
            "ws://10.0.0.1:8080/x",
        ] {
            let error = open(uri, Opening::Plain).await.err().expect("refused");
            assert!(matches!(error, ProviderError::Invalid(_)), "{uri}: {error}");
            assert!(error.to_string().contains("only wss://"), "{uri}: {error}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_that_accepts_and_never_answers_is_given_up() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("ws://{}/stalled", listener.local_addr().unwrap());
        // Accepted, and then nothing: no handshake answer ever comes.
        let held = tokio::spawn(async move { listener.accept().await });
        let error = open(&uri, Opening::Plain).await.err().expect("given up");
        assert!(error.to_string().contains("did not open within"), "{error}");
        held.abort();
    }
}
