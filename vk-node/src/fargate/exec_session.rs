//! ECS Exec's Session Manager data channel, the client's side (what AWS's
//! session-manager-plugin does for `aws ecs execute-command`): open the WebSocket
//! `ExecuteCommand` named, send the `OpenDataChannel` message with its token, answer the
//! agent's handshake (the session type is the one action a client may accept), then
//! stream: the caller's stdin and terminal sizes go as numbered `input_stream_data`
//! messages, the agent's `output_stream_data` messages are acknowledged and delivered in
//! sequence order (a duplicate is acknowledged again, an early one held until its turn),
//! stdout, stderr and an exit code as the agent sends them, until `channel_closed`.
//! Messages are not sent again when unacknowledged: the WebSocket's TCP carries them.

use std::collections::BTreeMap;

use azure_core::credentials::Secret;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::ssm_message::{
    ACKNOWLEDGE, AgentMessage, CHANNEL_CLOSED, INPUT_STREAM, OUTPUT_STREAM, PayloadType,
    new_message_id, uuid_text,
};
use crate::provider::{ProviderError, SessionEnd, SessionIo, TerminalSize, first_terminal_size};
use crate::session_socket::{Opening, Socket, open};

/// What the caller's stdin ending is sent as: Ctrl-D at the agent's terminal.
pub const END_OF_INPUT: &[u8] = b"\x04";

/// The answer to a handshake request: the session type accepted, anything else (KMS
/// encryption) refused as unsupported.
pub fn handshake_response(request: &[u8]) -> Value {
    let request: Value = serde_json::from_slice(request).unwrap_or_default();
    let mut processed = Vec::new();
    let mut errors = Vec::new();
    for action in request["RequestedClientActions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let kind = action["ActionType"].as_str().unwrap_or_default();
        if kind == "SessionType" {
            processed.push(json!({"ActionType": kind, "ActionStatus": 1}));
        } else {
            let error = format!("Unsupported action {kind}");
            processed.push(json!({"ActionType": kind, "ActionStatus": 3, "Error": error}));
            errors.push(error);
        }
    }
    json!({
        "ClientVersion": concat!("spillway-", env!("CARGO_PKG_VERSION")),
        "ProcessedClientActions": processed,
        "Errors": errors,
    })
}

fn transient(what: &str, error: impl std::fmt::Display) -> ProviderError {
    ProviderError::Transient(format!("ECS Exec data channel: {what}: {error}"))
}

struct Channel {
    socket: Socket,
    /// Our next input sequence number.
    sequence: i64,
    /// The agent's next output sequence number.
    expected: i64,
    /// Output that came early, by sequence number.
    early: BTreeMap<i64, AgentMessage>,
    /// Input held until the handshake completes.
    held: Vec<(PayloadType, Vec<u8>)>,
    ready: bool,
    /// The size the session starts with.
    first_size: TerminalSize,
    /// Sending failed: the agent closed its side.
    write_closed: bool,
    exit_code: Option<i32>,
}

impl Channel {
    /// Sends `message` unless the agent's side is closed already: a command that ended
    /// may close the channel before our last acknowledgement or size goes out, and what
    /// it sent before is still to be read.
    async fn send(&mut self, message: &AgentMessage) -> Result<(), ProviderError> {
        if self.write_closed {
            return Ok(());
        }
        if let Err(error) = self
            .socket
            .send(Message::Binary(message.encode().into()))
            .await
        {
            tracing::debug!(%error, "ECS Exec data channel closed for writing");
            self.write_closed = true;
        }
        Ok(())
    }

    async fn input(&mut self, kind: PayloadType, payload: Vec<u8>) -> Result<(), ProviderError> {
        if !self.ready && kind != PayloadType::HandshakeResponse {
            self.held.push((kind, payload));
            return Ok(());
        }
        let message = AgentMessage::stream(INPUT_STREAM, self.sequence, kind, payload);
        self.sequence += 1;
        self.send(&message).await
    }

    async fn size(&mut self, size: TerminalSize) -> Result<(), ProviderError> {
        let payload = json!({"cols": size.width, "rows": size.height});
        self.input(PayloadType::Size, payload.to_string().into_bytes())
            .await
    }

    /// One output message, in its turn.
    async fn deliver(
        &mut self,
        message: AgentMessage,
        io: &SessionIo,
    ) -> Result<bool, ProviderError> {
        match PayloadType::from_wire(message.payload_type) {
            Some(PayloadType::HandshakeRequest) => {
                let answer = handshake_response(&message.payload);
                self.input(
                    PayloadType::HandshakeResponse,
                    answer.to_string().into_bytes(),
                )
                .await?;
            }
            Some(PayloadType::HandshakeComplete) => {
                self.ready = true;
                // The terminal's size first, then what was typed meanwhile.
                self.size(self.first_size).await?;
                for (kind, payload) in std::mem::take(&mut self.held) {
                    self.input(kind, payload).await?;
                }
            }
            // The caller gone: the session is over.
            Some(PayloadType::Output) => return Ok(io.stdout.send(message.payload).await.is_ok()),
            Some(PayloadType::StdErr) => return Ok(io.stderr.send(message.payload).await.is_ok()),
            Some(PayloadType::ExitCode) => {
                self.exit_code = String::from_utf8_lossy(&message.payload)
                    .trim()
                    .parse()
                    .ok();
            }
            _ => {}
        }
        Ok(true)
    }

    /// One message from the agent; `false` when the session is over.
    async fn receive(&mut self, bytes: &[u8], io: &SessionIo) -> Result<bool, ProviderError> {
        let message = AgentMessage::decode(bytes).map_err(|e| transient("message", e))?;
        match message.message_type.as_str() {
            OUTPUT_STREAM => {
                self.send(&message.acknowledgement()).await?;
                if message.sequence_number >= self.expected {
                    self.early.insert(message.sequence_number, message);
                }
                while let Some(next) = self.early.remove(&self.expected) {
                    self.expected += 1;
                    if !self.deliver(next, io).await? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            CHANNEL_CLOSED => Ok(false),
            ACKNOWLEDGE => Ok(true),
            _ => Ok(true),
        }
    }
}

/// Runs one session on the data channel at `stream_url`, opened with `token`.
pub async fn run(
    stream_url: &str,
    token: &Secret,
    mut io: SessionIo,
    tty: bool,
) -> Result<SessionEnd, ProviderError> {
    // The agent's terminal starts with the caller's size, not a default it would then
    // change (typed input could reach it in between).
    let first_size = first_terminal_size(&mut io, tty).await;
    let mut socket = open(stream_url, Opening::Plain).await?;
    let opening = json!({
        "MessageSchemaVersion": "1.0",
        "RequestId": uuid_text(&new_message_id()),
        "TokenValue": token.secret(),
        "ClientId": uuid_text(&new_message_id()),
        "ClientVersion": concat!("spillway-", env!("CARGO_PKG_VERSION")),
    });
    socket
        .send(Message::Text(opening.to_string().into()))
        .await
        .map_err(|e| transient("open", e))?;
    let mut channel = Channel {
        socket,
        sequence: 0,
        expected: 0,
        early: BTreeMap::new(),
        held: Vec::new(),
        ready: false,
        first_size,
        write_closed: false,
        exit_code: None,
    };
    let (mut stdin_open, mut resizes_open) = (true, true);
    loop {
        tokio::select! {
            message = channel.socket.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    if !channel.receive(&bytes, &io).await? { break; }
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(error)) => return Err(transient("receive", error)),
                Some(Ok(_)) => {}
            },
            data = io.stdin.recv(), if stdin_open => match data {
                Some(data) => channel.input(PayloadType::Output, data).await?,
                None => {
                    stdin_open = false;
                    channel.input(PayloadType::Output, END_OF_INPUT.to_vec()).await?;
                }
            },
            size = io.resize.recv(), if resizes_open => match size {
                Some(size) => channel.size(size).await?,
                None => resizes_open = false,
            },
        }
    }
    let _ = channel.socket.close(None).await;
    Ok(channel
        .exit_code
        .map(SessionEnd::Exited)
        .unwrap_or(SessionEnd::Closed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_accepts_the_session_type_and_nothing_else() {
        let request = json!({"AgentVersion": "3.3.0.0", "RequestedClientActions": [
            {"ActionType": "SessionType", "ActionParameters": {"SessionType": "InteractiveCommands"}},
            {"ActionType": "KMSEncryption", "ActionParameters": {"KMSKeyId": "k"}}
        ]});
        let answer = handshake_response(request.to_string().as_bytes());
        assert_eq!(answer["ProcessedClientActions"][0]["ActionStatus"], 1);
        assert_eq!(answer["ProcessedClientActions"][1]["ActionStatus"], 3);
        assert_eq!(answer["Errors"][0], "Unsupported action KMSEncryption");
    }
}
