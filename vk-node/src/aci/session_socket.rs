//! The WebSockets ACI streams `exec` and `attach` on: opened with the password ARM handed
//! out (the first message for exec, the `Authorization` header for attach), then plain
//! text or binary messages both ways with no channels: stdout and stderr arrive mixed, and
//! the stream just ends with the process, without an exit code. `wss://` always; `ws://`
//! only to a loopback address (a local fake of ARM).

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use azure_core::credentials::Secret;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::provider::{ProviderError, SessionEnd, SessionIo};

/// How the password opens the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Password {
    /// Sent as the first message (exec).
    FirstMessage,
    /// Sent as the `Authorization` header (attach).
    Header,
}

/// What the caller's stdin ending is sent as: Ctrl-D, which ends a shell at ACI's terminal
/// (the socket itself has no way to close one direction).
pub const END_OF_INPUT: &[u8] = b"\x04";

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
    ProviderError::Invalid(format!("ACI's session WebSocket {what}"))
}

/// Opens the socket at `uri` with `password`.
pub async fn open(uri: &str, password: &Secret, how: Password) -> Result<Socket, ProviderError> {
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
        .map_err(|e| ProviderError::Transient(format!("ACI session WebSocket {host}: {e}")))?;
    let transport: Box<dyn Transport> = if secure {
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| refused(&format!("host {host}: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(tls())
            .connect(name, tcp)
            .await
            .map_err(|e| ProviderError::Transient(format!("ACI session WebSocket TLS: {e}")))?;
        Box::new(stream)
    } else {
        Box::new(tcp)
    };
    let mut request = uri
        .into_client_request()
        .map_err(|e| refused(&format!("request: {e}")))?;
    if how == Password::Header {
        let value = HeaderValue::from_str(password.secret())
            .map_err(|_| refused("password is no header value"))?;
        request.headers_mut().insert("Authorization", value);
    }
    let (mut socket, _) = tokio_tungstenite::client_async(request, transport)
        .await
        .map_err(|e| ProviderError::Transient(format!("ACI session WebSocket handshake: {e}")))?;
    if how == Password::FirstMessage {
        socket
            .send(Message::Text(password.secret().into()))
            .await
            .map_err(|e| ProviderError::Transient(format!("ACI session WebSocket: {e}")))?;
    }
    Ok(socket)
}

/// Streams between the caller and ACI until the socket ends or the caller's output goes:
/// everything ACI sends is stdout. With `forward_stdin` (exec), stdin goes as it comes
/// (text when it is UTF-8) and its end as [`END_OF_INPUT`]; without (attach, which is
/// output only) it is not read. Resizes after the start are dropped: ACI takes the
/// terminal size once, with the exec call.
pub async fn pump(mut socket: Socket, mut io: SessionIo, forward_stdin: bool) -> SessionEnd {
    let mut stdin_open = forward_stdin;
    let mut resizes_open = true;
    loop {
        tokio::select! {
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if io.stdout.send(text.as_bytes().to_vec()).await.is_err() { break; }
                }
                Some(Ok(Message::Binary(data))) => {
                    if io.stdout.send(data.to_vec()).await.is_err() { break; }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            data = io.stdin.recv(), if stdin_open => {
                let message = match data {
                    Some(data) => match String::from_utf8(data) {
                        Ok(text) => Message::Text(text.into()),
                        Err(bytes) => Message::Binary(bytes.into_bytes().into()),
                    },
                    None => {
                        stdin_open = false;
                        Message::Binary(END_OF_INPUT.to_vec().into())
                    }
                };
                if socket.send(message).await.is_err() { break; }
            },
            size = io.resize.recv(), if resizes_open => resizes_open = size.is_some(),
        }
    }
    let _ = socket.close(None).await;
    SessionEnd::Closed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_wss_or_loopback_ws_is_opened() {
        let password = Secret::new("p".to_owned());
        for uri in [
            "ws://example.com/exec",
            "http://127.0.0.1/exec",
            "ws://10.0.0.1:8080/x",
        ] {
            let error = open(uri, &password, Password::FirstMessage)
                .await
                .err()
                .expect("refused");
            assert!(matches!(error, ProviderError::Invalid(_)), "{uri}: {error}");
            assert!(error.to_string().contains("only wss://"), "{uri}: {error}");
        }
    }
}
