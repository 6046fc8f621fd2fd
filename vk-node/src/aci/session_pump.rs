//! ACI's exec and attach WebSockets, once open ([`crate::session_socket`]): plain text or
//! binary messages both ways with no channels, so stdout and stderr arrive mixed, and the
//! stream just ends with the process, without an exit code.

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::provider::{SessionEnd, SessionIo};
use crate::session_socket::Socket;

/// What the caller's stdin ending is sent as: Ctrl-D, which ends a shell at ACI's terminal
/// (the socket itself has no way to close one direction).
pub const END_OF_INPUT: &[u8] = b"\x04";

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
