//! The kubelet's streaming endpoints, which the apiserver calls for `kubectl exec`,
//! `attach` and `port-forward`.
//!
//! `exec` and `attach` speak the WebSocket remote-command protocol (`v5.channel.k8s.io`,
//! or `v4` without the stream close): every binary message starts with its channel,
//! 0 stdin, 1 stdout, 2 stderr, 3 the final status (a `metav1.Status`, with the exit code
//! when it is not 0), 4 terminal resizes; `v5` adds `[255, channel]` for "this stream is
//! closed". The node declares `ExtendWebSocketsToKubelet` in its status, so an apiserver
//! of 1.36 or later passes kubectl's WebSocket through instead of translating it to SPDY,
//! which this node does not speak (an older apiserver gets a sentence saying so).
//! Sessions are counted (`spillway_exec_sessions{provider}`) and capped per node
//! (`--max-exec-sessions`, 32 by default).
//! `port-forward` answers at once with a sentence: the pod's ports are at the provider.

use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use spillway_common::tls::ClientIdentity;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use super::ApiState;
use crate::provider::{ExecCommand, Provider, ProviderError, SessionEnd, SessionIo, TerminalSize};

/// The WebSocket subprotocols served, preferred first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE_STREAM: u8 = 255;

/// What port-forward cannot do on a virtual node, whatever the provider.
pub(crate) fn port_forward_refusal(provider: &str) -> String {
    format!(
        "port-forward is not supported on Spillway burst pods ({provider}): the pod runs at \
         the provider, not on a host this node can open its ports from; reach it through a \
         Service or its pod IP instead"
    )
}

pub(super) async fn port_forward<P: Provider>(
    State(state): State<ApiState<P>>,
    who: Option<Extension<ClientIdentity>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = state.guard(who, &headers, "proxy").await {
        return refused;
    }
    (
        StatusCode::BAD_REQUEST,
        port_forward_refusal(state.provider.name()),
    )
        .into_response()
}

/// The query the apiserver sends: `command` (repeated, exec only), `input`, `output`,
/// `error`, `tty`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamQuery {
    /// The argv (exec).
    pub command: Vec<String>,
    /// Stdin wanted.
    pub stdin: bool,
    /// Stdout wanted.
    pub stdout: bool,
    /// Stderr wanted.
    pub stderr: bool,
    /// A terminal.
    pub tty: bool,
}

impl StreamQuery {
    /// Parses a raw query string.
    pub fn parse(raw: Option<&str>) -> Self {
        let mut query = Self::default();
        let on = |v: &str| matches!(v, "1" | "true" | "True");
        for (key, value) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            match &*key {
                "command" => query.command.push(value.into_owned()),
                "input" => query.stdin = on(&value),
                "output" => query.stdout = on(&value),
                "error" => query.stderr = on(&value),
                "tty" => query.tty = on(&value),
                _ => {}
            }
        }
        query
    }
}

/// Which of the two a session is.
enum Session {
    Exec(ExecCommand),
    Attach { tty: bool },
}

impl Session {
    fn verb(&self) -> &'static str {
        match self {
            Session::Exec(_) => "exec",
            Session::Attach { .. } => "attach",
        }
    }
}

/// The sentence for a request that is not a WebSocket in a protocol served here.
fn needs_websocket(verb: &str, headers: &HeaderMap) -> String {
    let asked = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("no upgrade");
    format!(
        "kubectl {verb} on a Spillway burst pod needs a WebSocket stream ({}); this request \
         asked for {asked:?}. The apiserver passes kubectl's WebSocket through from \
         Kubernetes 1.36 on (ExtendWebSocketsToKubelet); older ones translate it to SPDY, \
         which the virtual node does not speak",
        PROTOCOLS.join(" or ")
    )
}

pub(super) async fn exec<P: Provider>(
    State(state): State<ApiState<P>>,
    who: Option<Extension<ClientIdentity>>,
    headers: HeaderMap,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = upgrade.ok();
    let query = StreamQuery::parse(raw.as_deref());
    if query.command.is_empty() {
        if let Some(refused) = state.guard(who, &headers, "proxy").await {
            return refused;
        }
        return (StatusCode::BAD_REQUEST, "exec needs a command").into_response();
    }
    let session = Session::Exec(ExecCommand {
        argv: query.command.clone(),
        stdin: query.stdin,
        tty: query.tty,
    });
    open(
        state,
        who,
        headers,
        (namespace, pod, container),
        query,
        session,
        upgrade,
    )
    .await
}

pub(super) async fn attach<P: Provider>(
    State(state): State<ApiState<P>>,
    who: Option<Extension<ClientIdentity>>,
    headers: HeaderMap,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = upgrade.ok();
    let query = StreamQuery::parse(raw.as_deref());
    let session = Session::Attach { tty: query.tty };
    open(
        state,
        who,
        headers,
        (namespace, pod, container),
        query,
        session,
        upgrade,
    )
    .await
}

/// Checks the caller and the pod, takes a session place, checks the protocol, and upgrades.
async fn open<P: Provider>(
    state: ApiState<P>,
    who: Option<Extension<ClientIdentity>>,
    headers: HeaderMap,
    (namespace, pod, container): (String, String, String),
    query: StreamQuery,
    session: Session,
    upgrade: Option<WebSocketUpgrade>,
) -> Response {
    if let Some(refused) = state.guard(who, &headers, "proxy").await {
        return refused;
    }
    let uid = match state.container_pod_uid(&namespace, &pod, &container) {
        Ok(uid) => uid,
        Err(refused) => return refused.into_response(),
    };
    // The cap before the protocol: kubectl falls back to SPDY when its WebSocket is
    // refused, and that second request must get the same answer, not "needs a WebSocket".
    let Ok(place) = state.sessions.clone().try_acquire_owned() else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "as many exec and attach sessions as this node serves (--max-exec-sessions) are \
             open; try again when one ends",
        )
            .into_response();
    };
    let Some(upgrade) = upgrade.map(|u| u.protocols(PROTOCOLS)) else {
        return (
            StatusCode::BAD_REQUEST,
            needs_websocket(session.verb(), &headers),
        )
            .into_response();
    };
    let Some(protocol) = upgrade
        .selected_protocol()
        .and_then(|p| p.to_str().ok())
        .map(str::to_owned)
    else {
        return (
            StatusCode::BAD_REQUEST,
            needs_websocket(session.verb(), &headers),
        )
            .into_response();
    };
    let provider = state.provider.clone();
    let gauge = state.session_gauge.clone();
    upgrade.on_upgrade(move |socket| async move {
        let _counted = SessionCount::new(gauge, place);
        let stream_close = protocol == PROTOCOLS[0];
        run(
            socket,
            provider,
            uid,
            container,
            query,
            session,
            stream_close,
        )
        .await;
    })
}

/// Holds a session place and counts it in the gauge while it lives.
struct SessionCount {
    gauge: prometheus::IntGauge,
    _place: OwnedSemaphorePermit,
}

impl SessionCount {
    fn new(gauge: prometheus::IntGauge, place: OwnedSemaphorePermit) -> Self {
        gauge.inc();
        Self {
            gauge,
            _place: place,
        }
    }
}

impl Drop for SessionCount {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The final status message: success, a non-zero exit code, or the failure.
pub fn status_message(command: &[String], end: &Result<SessionEnd, ProviderError>) -> Value {
    match end {
        Ok(SessionEnd::Exited(0) | SessionEnd::Closed) => {
            json!({"metadata": {}, "status": "Success"})
        }
        Ok(SessionEnd::Exited(code)) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(error) => json!({
            "metadata": {},
            "status": "Failure",
            "message": error.to_string(),
            "reason": "InternalError",
            "details": {"causes": [{"message": error.to_string()}]},
            "code": 500,
        }),
    }
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut bytes = Vec::with_capacity(data.len() + 1);
    bytes.push(channel);
    bytes.extend_from_slice(data);
    Message::Binary(bytes.into())
}

/// Reads the caller's messages: stdin, its close, resizes. Ends when the caller leaves.
async fn read_caller(
    mut incoming: futures::stream::SplitStream<WebSocket>,
    stdin: mpsc::Sender<Vec<u8>>,
    resize: mpsc::Sender<TerminalSize>,
    stream_close: bool,
) {
    let mut stdin = Some(stdin);
    while let Some(Ok(message)) = incoming.next().await {
        let data = match message {
            Message::Binary(data) => data,
            Message::Close(_) => break,
            _ => continue,
        };
        match (data.first().copied(), data.get(1).copied()) {
            (Some(CLOSE_STREAM), Some(STDIN)) if stream_close => stdin = None,
            (Some(STDIN), _) => {
                if let Some(sender) = &stdin
                    && sender.send(data[1..].to_vec()).await.is_err()
                {
                    stdin = None;
                }
            }
            (Some(RESIZE), _) => {
                if let Ok(size) = serde_json::from_slice::<TerminalSize>(&data[1..]) {
                    let _ = resize.try_send(size);
                }
            }
            _ => {}
        }
    }
}

/// One session: the provider runs it; output goes to the caller as it comes, then the
/// status, then a normal close. A caller who leaves ends it.
async fn run<P: Provider>(
    socket: WebSocket,
    provider: Arc<P>,
    uid: String,
    container: String,
    query: StreamQuery,
    session: Session,
    stream_close: bool,
) {
    let (mut outgoing, incoming) = socket.split();
    let (stdin_tx, stdin_rx) = mpsc::channel(16);
    let (resize_tx, resize_rx) = mpsc::channel(4);
    let (stdout_tx, mut stdout_rx) = mpsc::channel(16);
    let (stderr_tx, mut stderr_rx) = mpsc::channel(16);
    let io = SessionIo {
        stdin: stdin_rx,
        resize: resize_rx,
        stdout: stdout_tx,
        stderr: stderr_tx,
    };
    // Tell the caller the session is open: an empty message on the first channel it reads.
    let first = if query.stdout {
        STDOUT
    } else if query.stderr {
        STDERR
    } else {
        STATUS
    };
    if outgoing.send(frame(first, &[])).await.is_err() {
        return;
    }
    let left = CancellationToken::new();
    let reader = tokio::spawn({
        let left = left.clone();
        let stdin_tx = query.stdin.then_some(stdin_tx);
        async move {
            match stdin_tx {
                Some(stdin) => read_caller(incoming, stdin, resize_tx, stream_close).await,
                None => {
                    // No stdin: a sender nobody feeds, dropped at once so stdin is empty.
                    let (closed, _) = mpsc::channel(1);
                    read_caller(incoming, closed, resize_tx, stream_close).await
                }
            }
            left.cancel();
        }
    });
    let argv = match &session {
        Session::Exec(command) => command.argv.clone(),
        Session::Attach { .. } => Vec::new(),
    };
    let work = async {
        match &session {
            Session::Exec(command) => provider.exec(&uid, &container, command, io).await,
            Session::Attach { tty } => provider.attach(&uid, &container, *tty, io).await,
        }
    };
    tokio::pin!(work);
    let mut end = None;
    let (mut stdout_open, mut stderr_open) = (true, true);
    while end.is_none() || stdout_open || stderr_open {
        tokio::select! {
            result = &mut work, if end.is_none() => end = Some(result),
            data = stdout_rx.recv(), if stdout_open => match data {
                Some(data) if query.stdout => {
                    if outgoing.send(frame(STDOUT, &data)).await.is_err() { break; }
                }
                Some(_) => {}
                None => stdout_open = false,
            },
            data = stderr_rx.recv(), if stderr_open => match data {
                Some(data) if query.stderr || query.tty => {
                    let channel = if query.tty { STDOUT } else { STDERR };
                    if outgoing.send(frame(channel, &data)).await.is_err() { break; }
                }
                Some(_) => {}
                None => stderr_open = false,
            },
            () = left.cancelled() => break,
        }
    }
    reader.abort();
    let Some(end) = end else {
        tracing::info!(pod_uid = %uid, %container, verb = session.verb(), "caller left the session");
        return;
    };
    if let Err(error) = &end {
        tracing::info!(pod_uid = %uid, %container, verb = session.verb(), %error, "session refused or failed at the provider");
    }
    let status = status_message(&argv, &end);
    let _ = outgoing
        .send(frame(STATUS, status.to_string().as_bytes()))
        .await;
    let _ = outgoing
        .send(Message::Close(Some(CloseFrame {
            code: close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apiservers_query_is_read_with_every_argument_in_order() {
        let query = StreamQuery::parse(Some(
            "command=sh&command=-c&command=echo%20a%20b&input=1&output=1&tty=1",
        ));
        assert_eq!(query.command, ["sh", "-c", "echo a b"]);
        assert!(query.stdin && query.stdout && query.tty && !query.stderr);
        assert_eq!(StreamQuery::parse(None), StreamQuery::default());
    }

    #[test]
    fn the_status_carries_the_exit_code_as_kubectl_reads_it() {
        let argv = vec!["false".to_owned()];
        assert_eq!(
            status_message(&argv, &Ok(SessionEnd::Exited(0)))["status"],
            "Success"
        );
        assert_eq!(
            status_message(&argv, &Ok(SessionEnd::Closed))["status"],
            "Success"
        );
        let failed = status_message(&argv, &Ok(SessionEnd::Exited(3)));
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
        let refused = status_message(
            &argv,
            &Err(ProviderError::Invalid("no such container".into())),
        );
        assert_eq!(refused["status"], "Failure");
        assert!(
            refused["message"]
                .as_str()
                .unwrap()
                .contains("no such container")
        );
    }

    #[test]
    fn a_request_that_is_not_a_websocket_is_told_what_is_needed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, "SPDY/3.1".parse().unwrap());
        let sentence = needs_websocket("exec", &headers);
        assert!(sentence.contains("v5.channel.k8s.io"), "{sentence}");
        assert!(sentence.contains("\"SPDY/3.1\""), "{sentence}");
    }
}
