//! A stand-in for the Session Manager data channel ECS Exec opens, on loopback: the agent's
//! side of the protocol AWS's session-manager-plugin speaks (its binary messages are
//! `spillway_vk_node::fargate::ssm_message`). A session is handed out with a stream URL and
//! a token; the client's first message is the `OpenDataChannel` JSON with that token; the
//! agent then asks for the session type (`HandshakeRequest`, `InteractiveCommands`), takes
//! the client's `HandshakeResponse`, says `HandshakeComplete`, and runs the command:
//! `/bin/sh` (or `sh`) is [`LineShell`] sized by the client's `Size` messages, anything else
//! prints one line and ends. Every stream message is acknowledged and sequence-numbered in
//! both directions; the end is a `channel_closed` message. What the fake saw is kept for
//! assertions. The real plugin is run against it in `tests/fake_ssm.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use spillway_vk_node::fargate::ssm_message::{
    ACKNOWLEDGE, AgentMessage, CHANNEL_CLOSED, INPUT_STREAM, OUTPUT_STREAM, PayloadType,
    new_message_id, uuid_text,
};

use crate::fake_shell::LineShell;
use crate::loopback_server::LoopbackServer;

/// A session handed out: what ECS `ExecuteCommand` answers in `session`.
#[derive(Clone, Debug)]
pub struct SessionGrant {
    /// `sessionId`.
    pub session_id: String,
    /// `streamUrl` (`ws://127.0.0.1:…`).
    pub stream_url: String,
    /// `tokenValue`.
    pub token: String,
}

/// What the fake saw of one session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionLog {
    /// The client opened the channel with the right token.
    pub opened: bool,
    /// The client answered the handshake.
    pub handshake_answered: bool,
    /// Terminal sizes the client sent, `(cols, rows)`.
    pub sizes: Vec<(u64, u64)>,
    /// Sequence numbers of the agent's messages the client acknowledged.
    pub acknowledged: Vec<i64>,
    /// Input stream sequence numbers, in arrival order.
    pub input_sequence: Vec<i64>,
    /// The session ended with `channel_closed`.
    pub closed: bool,
}

struct Pending {
    token: String,
    command: String,
}

#[derive(Default)]
struct SsmState {
    pending: Mutex<HashMap<String, Pending>>,
    logs: Mutex<HashMap<String, SessionLog>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running fake; stops when dropped.
pub struct FakeSessionManager {
    /// `ws://127.0.0.1:PORT`.
    pub url: String,
    state: Arc<SsmState>,
    _server: LoopbackServer,
}

impl FakeSessionManager {
    /// Starts the fake on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let state = Arc::new(SsmState::default());
        let app = Router::new()
            .route("/v1/data-channel/{session}", get(socket))
            .with_state(state.clone());
        let server = LoopbackServer::start(app).await?;
        Ok(Self {
            url: format!("ws://{}", server.addr),
            state,
            _server: server,
        })
    }

    /// Hands out a session that will run `command`.
    pub fn grant(&self, command: &str) -> SessionGrant {
        let session_id = format!("ecs-execute-command-{}", uuid_text(&new_message_id()));
        let token = format!("token-{}", uuid_text(&new_message_id()));
        lock(&self.state.pending).insert(
            session_id.clone(),
            Pending {
                token: token.clone(),
                command: command.to_owned(),
            },
        );
        SessionGrant {
            stream_url: format!("{}/v1/data-channel/{session_id}", self.url),
            session_id,
            token,
        }
    }

    /// What the fake saw of session `id`.
    pub fn log(&self, id: &str) -> SessionLog {
        lock(&self.state.logs).get(id).cloned().unwrap_or_default()
    }
}

async fn socket(
    State(state): State<Arc<SsmState>>,
    Path(session): Path<String>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(pending) = lock(&state.pending).remove(&session) else {
        return (axum::http::StatusCode::NOT_FOUND, "no such session").into_response();
    };
    upgrade.on_upgrade(move |socket| async move {
        let mut agent = Agent {
            state,
            session,
            socket,
            sequence: 0,
        };
        agent.run(pending).await;
    })
}

struct Agent {
    state: Arc<SsmState>,
    session: String,
    socket: WebSocket,
    sequence: i64,
}

impl Agent {
    fn note(&self, change: impl FnOnce(&mut SessionLog)) {
        change(
            lock(&self.state.logs)
                .entry(self.session.clone())
                .or_default(),
        );
    }

    async fn send_stream(&mut self, payload_type: PayloadType, payload: Vec<u8>) -> bool {
        let message = AgentMessage::stream(OUTPUT_STREAM, self.sequence, payload_type, payload);
        self.sequence += 1;
        self.socket
            .send(Message::Binary(message.encode().into()))
            .await
            .is_ok()
    }

    async fn close(&mut self) {
        let payload = json!({
            "MessageId": uuid_text(&new_message_id()),
            "CreatedDate": jiff::Timestamp::now().to_string(),
            "DestinationId": "",
            "SessionId": self.session,
            "MessageType": CHANNEL_CLOSED,
            "SchemaVersion": 1,
            "Output": "",
        });
        let mut message = AgentMessage::stream(
            CHANNEL_CLOSED,
            self.sequence,
            PayloadType::Output,
            payload.to_string().into_bytes(),
        );
        message.payload_type = 0;
        let _ = self
            .socket
            .send(Message::Binary(message.encode().into()))
            .await;
        self.note(|log| log.closed = true);
        let _ = self.socket.send(Message::Close(None)).await;
    }

    async fn run(&mut self, pending: Pending) {
        // OpenDataChannel: a text message with the token.
        let opened = match self.socket.recv().await {
            Some(Ok(Message::Text(text))) => serde_json::from_str::<Value>(&text)
                .ok()
                .is_some_and(|v| v["TokenValue"] == pending.token.as_str()),
            _ => false,
        };
        if !opened {
            let _ = self.socket.send(Message::Close(None)).await;
            return;
        }
        self.note(|log| log.opened = true);
        let request = json!({
            "AgentVersion": "3.3.0.0",
            "RequestedClientActions": [{
                "ActionType": "SessionType",
                "ActionParameters": {"SessionType": "InteractiveCommands", "Properties": null}
            }]
        });
        if !self
            .send_stream(
                PayloadType::HandshakeRequest,
                request.to_string().into_bytes(),
            )
            .await
        {
            return;
        }
        let shell = matches!(pending.command.as_str(), "/bin/sh" | "sh");
        let mut terminal = LineShell::new(24, 80);
        while let Some(Ok(message)) = self.socket.recv().await {
            let Message::Binary(bytes) = message else {
                continue;
            };
            let Ok(message) = AgentMessage::decode(&bytes) else {
                continue;
            };
            if message.message_type == ACKNOWLEDGE {
                if let Some(sequence) = message.acknowledged_sequence() {
                    self.note(|log| log.acknowledged.push(sequence));
                }
                continue;
            }
            if message.message_type != INPUT_STREAM {
                continue;
            }
            let ack = message.acknowledgement();
            if self
                .socket
                .send(Message::Binary(ack.encode().into()))
                .await
                .is_err()
            {
                return;
            }
            let sequence = message.sequence_number;
            self.note(|log| log.input_sequence.push(sequence));
            match PayloadType::from_wire(message.payload_type) {
                Some(PayloadType::HandshakeResponse) => {
                    self.note(|log| log.handshake_answered = true);
                    let complete =
                        json!({"HandshakeTimeToComplete": 1_000_000, "CustomerMessage": ""});
                    if !self
                        .send_stream(
                            PayloadType::HandshakeComplete,
                            complete.to_string().into_bytes(),
                        )
                        .await
                    {
                        return;
                    }
                    if !shell {
                        let line = format!("{} ran in the task\n", pending.command);
                        self.send_stream(PayloadType::Output, line.into_bytes())
                            .await;
                        self.close().await;
                        return;
                    }
                }
                Some(PayloadType::Size) => {
                    let size: Value = serde_json::from_slice(&message.payload).unwrap_or_default();
                    let (cols, rows) = (
                        size["cols"].as_u64().unwrap_or(0),
                        size["rows"].as_u64().unwrap_or(0),
                    );
                    terminal.cols = cols;
                    terminal.rows = rows;
                    self.note(|log| log.sizes.push((cols, rows)));
                }
                Some(PayloadType::Output) => {
                    let fed = terminal.feed(&message.payload);
                    for line in fed.output {
                        // A terminal turns LF into CR LF.
                        let line = line.replace('\n', "\r\n");
                        if !self
                            .send_stream(PayloadType::Output, line.into_bytes())
                            .await
                        {
                            return;
                        }
                    }
                    if fed.ended {
                        self.close().await;
                        return;
                    }
                }
                _ => {}
            }
        }
    }
}
