//! A fault-injecting HTTP proxy of the tests' own in front of moto: it forwards AWS JSON
//! API calls and, by operation (the `X-Amz-Target` header, e.g. `RunTask`), stalls them,
//! answers `ThrottlingException`, refuses them as invalid (`ClientException`), answers a
//! `RunTask` with a capacity failure, or answers a 5xx, either for the next N calls of one
//! operation or for a share of all calls. The wire stays the real AWS protocol; only the
//! answers the provider would see from a struggling AWS are forced.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use rand::Rng;

/// What the proxy does to one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Never answers (as a hung connection).
    Stall,
    /// `400 ThrottlingException`.
    Throttle,
    /// `500 ServerException`.
    ServerError,
    /// `400 ClientException`: the request itself is refused, as ECS refuses an image or
    /// a task definition it cannot run.
    Refuse,
    /// `200` with no task and a placement failure, as `RunTask` answers when Fargate has
    /// no capacity for the task.
    Capacity,
    /// `400 AccessDeniedException`: the node's identity may not make the call (a policy
    /// missing from its role).
    Deny,
}

#[derive(Default)]
struct Rules {
    next: HashMap<String, VecDeque<Fault>>,
    throttle_share: f64,
    error_share: f64,
    /// Operation → (forwarded, faulted).
    counts: BTreeMap<String, (u64, u64)>,
    /// The address `DescribeTasks` answers give every task (its ENI's private IPv4).
    task_ip: Option<String>,
    /// The `healthStatus` they give a running task's containers (moto's is always
    /// `HEALTHY`).
    container_health: Option<String>,
    /// Who answers `ExecuteCommand`, which moto does not serve.
    execute_command: Option<ExecuteCommandAnswer>,
    /// The `ExecuteCommand` requests seen, as sent.
    execute_command_requests: Vec<serde_json::Value>,
}

/// Answers one `ExecuteCommand` request body: the response body, or why it is refused.
pub type ExecuteCommandAnswer =
    Arc<dyn Fn(&serde_json::Value) -> Result<serde_json::Value, String> + Send + Sync>;

/// The proxy; stops when dropped.
pub struct AwsFaultProxy {
    addr: SocketAddr,
    rules: Arc<Mutex<Rules>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    rules: Arc<Mutex<Rules>>,
}

impl AwsFaultProxy {
    /// Listens on a free loopback port, forwarding to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let rules = Arc::new(Mutex::new(Rules::default()));
        let state = ProxyState {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
            rules: rules.clone(),
        };
        let app = Router::new().fallback(forward).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, rules, task })
    }

    /// `http://127.0.0.1:<port>`, for `--aws-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on every task `DescribeTasks` describes has `ip` as its private IPv4
    /// (a loopback address, so the node's probes reach a server the test runs), and the
    /// containers of a running task are running, as ECS reports them (moto leaves them
    /// `PENDING`).
    pub fn rewrite_task_ips(&self, ip: &str) {
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).task_ip = Some(ip.to_owned());
    }

    /// From now on the containers of a running task report `status` (`HEALTHY`,
    /// `UNHEALTHY`) as their ECS health check's verdict; with [`Self::rewrite_task_ips`].
    pub fn set_container_health(&self, status: &str) {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .container_health = Some(status.to_owned());
    }

    /// The next `count` calls of `operation` (e.g. `StopTask`) get `fault`.
    pub fn fail_next(&self, operation: &str, count: usize, fault: Fault) {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        rules
            .next
            .entry(operation.to_owned())
            .or_default()
            .extend(std::iter::repeat_n(fault, count));
    }

    /// Drops the faults planned for `operation` that have not been used yet.
    pub fn clear(&self, operation: &str) {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        rules.next.remove(operation);
    }

    /// From now on each call is throttled with probability `throttle` and answered with
    /// a 5xx with probability `error`.
    pub fn set_shares(&self, throttle: f64, error: f64) {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        rules.throttle_share = throttle;
        rules.error_share = error;
    }

    /// From now on `ExecuteCommand` (which moto does not serve) is answered by `answer`
    /// (a refusal is a `400 InvalidParameterException`), after the faults planned for it.
    pub fn answer_execute_command(&self, answer: ExecuteCommandAnswer) {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .execute_command = Some(answer);
    }

    /// The `ExecuteCommand` request bodies seen so far.
    pub fn execute_command_requests(&self) -> Vec<serde_json::Value> {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .execute_command_requests
            .clone()
    }

    /// Operation → (forwarded, faulted) so far.
    pub fn counts(&self) -> BTreeMap<String, (u64, u64)> {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .counts
            .clone()
    }
}

impl Drop for AwsFaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn operation(headers: &HeaderMap) -> String {
    headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("other")
        .to_owned()
}

fn fault_response(fault: Fault) -> Response {
    if fault == Fault::Capacity {
        return Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/x-amz-json-1.1")
            .body(Body::from(
                r#"{"tasks":[],"failures":[{"reason":"Capacity is unavailable at this time. Please try again later or in a different availability zone","detail":"injected by the test's fault proxy"}]}"#,
            ))
            .expect("a valid response");
    }
    let (status, kind) = match fault {
        Fault::Throttle => (StatusCode::BAD_REQUEST, "ThrottlingException"),
        Fault::ServerError | Fault::Stall => (StatusCode::INTERNAL_SERVER_ERROR, "ServerException"),
        Fault::Refuse | Fault::Capacity => (StatusCode::BAD_REQUEST, "ClientException"),
        Fault::Deny => (StatusCode::BAD_REQUEST, "AccessDeniedException"),
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amzn-errortype", kind)
        .body(Body::from(format!(
            r#"{{"__type":"{kind}","message":"injected by the test's fault proxy"}}"#
        )))
        .expect("a valid response")
}

async fn forward(
    State(state): State<ProxyState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let op = operation(&headers);
    let (task_ip, container_health) = if op == "DescribeTasks" {
        let rules = state.rules.lock().unwrap_or_else(|p| p.into_inner());
        (rules.task_ip.clone(), rules.container_health.clone())
    } else {
        (None, None)
    };
    let fault = {
        let mut rules = state.rules.lock().unwrap_or_else(|p| p.into_inner());
        let planned = rules.next.get_mut(&op).and_then(VecDeque::pop_front);
        let roll: f64 = rand::rng().random();
        let fault = planned.or(if roll < rules.throttle_share {
            Some(Fault::Throttle)
        } else if roll < rules.throttle_share + rules.error_share {
            Some(Fault::ServerError)
        } else {
            None
        });
        let entry = rules.counts.entry(op.clone()).or_default();
        if fault.is_some() {
            entry.1 += 1;
        } else {
            entry.0 += 1;
        }
        fault
    };
    match fault {
        Some(Fault::Stall) => std::future::pending().await,
        Some(fault) => return fault_response(fault),
        None => {}
    }
    if op == "ExecuteCommand" {
        let answer = state
            .rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .execute_command
            .clone();
        if let Some(answer) = answer {
            let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            state
                .rules
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .execute_command_requests
                .push(request.clone());
            let (status, body) = match answer(&request) {
                Ok(answer) => (StatusCode::OK, answer.to_string()),
                Err(why) => (
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"__type": "InvalidParameterException", "message": why})
                        .to_string(),
                ),
            };
            return Response::builder()
                .status(status)
                .header("content-type", "application/x-amz-json-1.1")
                .body(Body::from(body))
                .expect("a valid response");
        }
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut request = state
        .client
        .request(method, format!("{}{path}", state.upstream))
        .body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(answer) => {
            let mut response = Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                if name != "content-length" && name != "transfer-encoding" {
                    response = response.header(name, value);
                }
            }
            let bytes = answer.bytes().await.unwrap_or_default();
            let bytes = match &task_ip {
                Some(ip) => {
                    with_task_ip(&bytes, ip, container_health.as_deref()).map_or(bytes, Bytes::from)
                }
                None => bytes,
            };
            response.body(Body::from(bytes)).expect("a valid response")
        }
        Err(error) => Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Body::from(error.to_string()))
            .expect("a valid response"),
    }
}

/// A `DescribeTasks` answer with every task's private IPv4 set to `ip` and a running
/// task's containers running (with `health` as their health check's verdict); `None`
/// when the body is not one.
fn with_task_ip(body: &[u8], ip: &str, health: Option<&str>) -> Option<Vec<u8>> {
    let mut answer: serde_json::Value = serde_json::from_slice(body).ok()?;
    for task in answer.get_mut("tasks")?.as_array_mut()? {
        if task.get("lastStatus").and_then(|s| s.as_str()) == Some("RUNNING") {
            for container in task
                .get_mut("containers")
                .and_then(|c| c.as_array_mut())
                .into_iter()
                .flatten()
            {
                container["lastStatus"] = serde_json::Value::String("RUNNING".into());
                if let Some(health) = health {
                    container["healthStatus"] = serde_json::Value::String(health.into());
                }
            }
        }
        for attachment in task
            .get_mut("attachments")
            .and_then(|a| a.as_array_mut())
            .into_iter()
            .flatten()
        {
            for detail in attachment
                .get_mut("details")
                .and_then(|d| d.as_array_mut())
                .into_iter()
                .flatten()
            {
                if detail.get("name").and_then(|n| n.as_str()) == Some("privateIPv4Address") {
                    detail["value"] = serde_json::Value::String(ip.to_owned());
                }
            }
        }
    }
    serde_json::to_vec(&answer).ok()
}
