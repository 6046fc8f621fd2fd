//! The fake's exec and attach, as ACI's REST reference and docs describe them: a POST to
//! `…/containers/{container}/exec` with `{command, terminalSize: {rows, cols}}` (checked
//! against the spec's `ContainerExecRequest`) or to `…/attach` answers
//! `{webSocketUri, password}`; the exec WebSocket wants the password as its first
//! message, the attach one as its `Authorization` header. Each socket opens once.
//!
//! What runs behind exec: `/bin/sh` (or `sh`) is [`LineShell`] in a terminal of the size
//! the exec call named; any other program prints one line naming itself, container and
//! group, and exits.
//! Attach sends a first line and the container's first log line, then closes.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ArmState, arm_error, gate, host, json_response, lock, new_id};
use crate::fake_shell::LineShell;

/// One session handed out and not opened yet.
pub(super) struct Session {
    group: String,
    container: String,
    password: String,
    /// `None` for attach.
    exec: Option<ExecCall>,
}

struct ExecCall {
    command: String,
    rows: u64,
    cols: u64,
}

/// What the fake saw of sessions, for assertions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionCounts {
    /// Exec bodies accepted, as sent.
    pub exec_bodies: Vec<Value>,
    /// Exec bodies refused against the spec, with why.
    pub exec_refused: Vec<String>,
    /// Attach calls answered.
    pub attaches: u64,
    /// Sockets refused for a wrong or missing password.
    pub wrong_passwords: u64,
}

fn container_known(state: &ArmState, group: &str, container: &str) -> Option<Response> {
    let groups = lock(&state.groups);
    let Some(stored) = groups.get(group) else {
        return Some(arm_error(StatusCode::NOT_FOUND, "ResourceNotFound", group));
    };
    let known = stored.body["properties"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["name"] == container);
    (!known).then(|| arm_error(StatusCode::NOT_FOUND, "ContainerNotFound", container))
}

fn hand_out(state: &ArmState, headers: &HeaderMap, session: Session) -> Response {
    let id = new_id(state);
    let password = format!("pw-{id}-{}", rand::random::<u64>());
    let session = Session {
        password: password.clone(),
        ..session
    };
    lock(&state.sessions).insert(id.to_string(), session);
    json_response(
        StatusCode::OK,
        &json!({
            "webSocketUri": format!("ws://{}/fake/sessions/{id}", host(headers)),
            "password": password,
        }),
    )
}

pub(super) async fn exec(
    State(state): State<Arc<ArmState>>,
    Path((_sub, _rg, group, container)): Path<(String, String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refusal) = gate(&state, &headers, &query, |c| &mut c.sessions) {
        return refusal;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let problems = state.validator.exec_violations(&body);
    if !problems.is_empty() {
        lock(&state.session_counts)
            .exec_refused
            .push(problems.join("; "));
        return arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            &problems.join("; "),
        );
    }
    if let Some(missing) = container_known(&state, &group, &container) {
        return missing;
    }
    lock(&state.session_counts).exec_bodies.push(body.clone());
    let call = ExecCall {
        command: body["command"].as_str().unwrap_or_default().to_owned(),
        rows: body["terminalSize"]["rows"].as_u64().unwrap_or(24),
        cols: body["terminalSize"]["cols"].as_u64().unwrap_or(80),
    };
    let session = Session {
        group,
        container,
        password: String::new(),
        exec: Some(call),
    };
    hand_out(&state, &headers, session)
}

pub(super) async fn attach(
    State(state): State<Arc<ArmState>>,
    Path((_sub, _rg, group, container)): Path<(String, String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = gate(&state, &headers, &query, |c| &mut c.sessions) {
        return refusal;
    }
    if let Some(missing) = container_known(&state, &group, &container) {
        return missing;
    }
    lock(&state.session_counts).attaches += 1;
    let session = Session {
        group,
        container,
        password: String::new(),
        exec: None,
    };
    hand_out(&state, &headers, session)
}

/// `GET /fake/sessions/{id}`: the WebSocket of a session handed out.
pub(super) async fn socket(
    State(state): State<Arc<ArmState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(session) = lock(&state.sessions).remove(&id) else {
        return (StatusCode::NOT_FOUND, "no such session, or opened already").into_response();
    };
    if session.exec.is_none() {
        let sent = headers.get("authorization").and_then(|v| v.to_str().ok());
        if sent != Some(session.password.as_str()) {
            lock(&state.session_counts).wrong_passwords += 1;
            return (StatusCode::UNAUTHORIZED, "wrong password").into_response();
        }
    }
    upgrade.on_upgrade(move |socket| run(state, session, socket))
}

async fn send(socket: &mut WebSocket, text: String) -> bool {
    socket.send(Message::Text(text.into())).await.is_ok()
}

async fn run(state: Arc<ArmState>, session: Session, mut socket: WebSocket) {
    let Some(call) = &session.exec else {
        let line = format!(
            "attached to {} of {}\n{} line 1\n",
            session.container, session.group, session.container
        );
        let _ = send(&mut socket, line).await;
        let _ = socket.send(Message::Close(None)).await;
        return;
    };
    // The password comes first.
    let first = match socket.recv().await {
        Some(Ok(Message::Text(text))) => text.to_string(),
        _ => String::new(),
    };
    if first != session.password {
        lock(&state.session_counts).wrong_passwords += 1;
        let _ = socket.send(Message::Close(None)).await;
        return;
    }
    if !matches!(call.command.as_str(), "/bin/sh" | "sh") {
        let line = format!(
            "{} ran in {} of {}\n",
            call.command, session.container, session.group
        );
        let _ = send(&mut socket, line).await;
        let _ = socket.send(Message::Close(None)).await;
        return;
    }
    let mut shell = LineShell::new(call.rows, call.cols);
    'session: while let Some(Ok(message)) = socket.recv().await {
        let bytes = match message {
            Message::Text(text) => text.as_bytes().to_vec(),
            Message::Binary(data) => data.to_vec(),
            Message::Close(_) => break,
            _ => continue,
        };
        let fed = shell.feed(&bytes);
        for answer in fed.output {
            if !send(&mut socket, answer).await {
                break 'session;
            }
        }
        if fed.ended {
            break;
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
