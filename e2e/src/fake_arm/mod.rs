//! A small stand-in for Azure Resource Manager's container-group API on loopback, for the
//! ACI node's e2e tests and benchmark. It checks what a real ARM would refuse — the
//! bearer token, the api-version, and every PUT body against the official spec's
//! schemas (`aci_spec`) — and plays ARM's parts the node must handle: `201` plus an
//! `Azure-AsyncOperation` to poll, groups that provision, run and get an IP over time,
//! `202` deletes with a `Location`, paged lists with `nextLink`, container logs written
//! a line a second (five in all), exec and attach WebSockets ([`sessions`]), and
//! bursts of `429 Too Many Requests` with `Retry-After`.

mod sessions;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::aci_spec::RequestValidator;
use crate::loopback_server::LoopbackServer;
pub use sessions::SessionCounts;

/// The api-version every call must name.
pub const API_VERSION: &str = "2023-05-01";

/// What the fake does besides answering.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// From PUT to provisioned and running.
    pub start_latency: Duration,
    /// Groups per list page (small, so the node's paging is exercised).
    pub page_size: usize,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            start_latency: Duration::from_millis(500),
            page_size: 5,
        }
    }
}

/// How the fake refuses a container group PUT, as ACI does when it has no room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutFault {
    /// `409 ContainerGroupQuotaReached`: the subscription's quota of groups is used up.
    Quota,
    /// `503 ServiceUnavailable`: the region has no capacity or the service is down.
    ServiceUnavailable,
}

/// A stored group and when it was created.
struct Stored {
    body: Value,
    created: Instant,
    ip: String,
}

/// Calls seen, by kind, for assertions and benchmark figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// PUTs of container groups (accepted or not).
    pub puts: u64,
    /// GETs of one group.
    pub gets: u64,
    /// List pages served.
    pub lists: u64,
    /// DELETEs.
    pub deletes: u64,
    /// Operation polls.
    pub polls: u64,
    /// Log reads.
    pub logs: u64,
    /// Exec and attach calls.
    pub sessions: u64,
    /// Requests answered 429.
    pub throttled: u64,
    /// Requests refused for a bad token.
    pub unauthorized: u64,
}

struct ArmState {
    token: String,
    behaviour: Behaviour,
    validator: RequestValidator,
    groups: Mutex<BTreeMap<String, Stored>>,
    /// Operation id → when it completes.
    operations: Mutex<HashMap<String, Instant>>,
    /// How many of the next requests get a 429.
    throttle_next: Mutex<u64>,
    /// Refusals for the next PUTs.
    put_faults: Mutex<std::collections::VecDeque<PutFault>>,
    /// PUT bodies refused against the spec, with why.
    refused: Mutex<Vec<String>>,
    counts: Mutex<CallCounts>,
    /// Every request's method and path, as received (before routing).
    seen: Mutex<Vec<String>>,
    next_id: Mutex<u64>,
    /// Exec and attach sessions handed out and not opened yet, by id.
    sessions: Mutex<HashMap<String, sessions::Session>>,
    session_counts: Mutex<SessionCounts>,
}

/// The running fake; stops when dropped.
pub struct FakeArm {
    /// Its base URL (`http://127.0.0.1:PORT`), for `--arm-endpoint`.
    pub url: String,
    state: Arc<ArmState>,
    _server: LoopbackServer,
}

impl FakeArm {
    /// Starts a fake that accepts `token` as its only bearer token.
    pub async fn start(token: &str, behaviour: Behaviour) -> anyhow::Result<Self> {
        let state = Arc::new(ArmState {
            token: token.to_owned(),
            behaviour,
            validator: RequestValidator::new(),
            groups: Mutex::new(BTreeMap::new()),
            operations: Mutex::new(HashMap::new()),
            throttle_next: Mutex::new(0),
            put_faults: Mutex::new(std::collections::VecDeque::new()),
            refused: Mutex::new(Vec::new()),
            counts: Mutex::new(CallCounts::default()),
            seen: Mutex::new(Vec::new()),
            next_id: Mutex::new(0),
            sessions: Mutex::new(HashMap::new()),
            session_counts: Mutex::new(SessionCounts::default()),
        });
        let group_path = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerInstance/containerGroups";
        let app = Router::new()
            .route(group_path, get(list))
            .route(
                &format!("{group_path}/{{name}}"),
                get(get_group).put(put_group).delete(delete_group),
            )
            .route(
                &format!("{group_path}/{{name}}/containers/{{container}}/logs"),
                get(logs),
            )
            .route("/fake/operations/{id}", get(operation))
            .route(
                &format!("{group_path}/{{name}}/containers/{{container}}/exec"),
                post(sessions::exec),
            )
            .route(
                &format!("{group_path}/{{name}}/containers/{{container}}/attach"),
                post(sessions::attach),
            )
            .route("/fake/sessions/{id}", get(sessions::socket))
            .route("/fake/deletions/{id}", get(deletion))
            .layer(axum::middleware::from_fn_with_state(state.clone(), record))
            .with_state(state.clone());
        let server = LoopbackServer::start(app).await?;
        Ok(Self {
            url: format!("http://{}", server.addr),
            state,
            _server: server,
        })
    }

    /// Answers the next `n` requests with `429` and `Retry-After: 1`.
    pub fn throttle_next(&self, n: u64) {
        *lock(&self.state.throttle_next) = n;
    }

    /// Refuses the next `n` container group PUTs with `fault`.
    pub fn fail_next_puts(&self, n: usize, fault: PutFault) {
        lock(&self.state.put_faults).extend(std::iter::repeat_n(fault, n));
    }

    /// Drops the PUT refusals not used yet.
    pub fn clear_put_faults(&self) {
        lock(&self.state.put_faults).clear();
    }

    /// What the exec and attach calls and sockets saw so far.
    pub fn session_counts(&self) -> SessionCounts {
        lock(&self.state.session_counts).clone()
    }

    /// Calls seen so far.
    pub fn counts(&self) -> CallCounts {
        lock(&self.state.counts).clone()
    }

    /// Every request so far, as `METHOD /path` (the path as received, query left out).
    pub fn requests(&self) -> Vec<String> {
        lock(&self.state.seen).clone()
    }

    /// PUT bodies the spec refused, with the reasons.
    pub fn refused(&self) -> Vec<String> {
        lock(&self.state.refused).clone()
    }

    /// The stored groups' PUT bodies, by name.
    pub fn groups(&self) -> BTreeMap<String, Value> {
        lock(&self.state.groups)
            .iter()
            .map(|(name, stored)| (name.clone(), stored.body.clone()))
            .collect()
    }

    /// Adds a group as if someone had created it (another cluster's, or one a crash left).
    pub fn insert_group(&self, name: &str, body: Value) {
        lock(&self.state.groups).insert(
            name.to_owned(),
            Stored {
                body,
                created: Instant::now(),
                ip: "10.240.0.250".into(),
            },
        );
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn arm_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        json!({"error": {"code": code, "message": message}}).to_string(),
    )
        .into_response()
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The checks every call passes first: token, api-version, injected throttling; a call
/// that passes is counted in the field `counter` picks.
fn gate(
    state: &ArmState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    counter: fn(&mut CallCounts) -> &mut u64,
) -> Option<Response> {
    let expected = format!("Bearer {}", state.token);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        lock(&state.counts).unauthorized += 1;
        return Some(arm_error(
            StatusCode::UNAUTHORIZED,
            "AuthenticationFailed",
            "missing or wrong bearer token",
        ));
    }
    {
        let mut throttle = lock(&state.throttle_next);
        if *throttle > 0 {
            *throttle -= 1;
            lock(&state.counts).throttled += 1;
            return Some(retry_after_a_second(arm_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "the request is throttled",
            )));
        }
    }
    if query.get("api-version").map(String::as_str) != Some(API_VERSION) {
        return Some(arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            &format!("api-version must be {API_VERSION}"),
        ));
    }
    *counter(&mut lock(&state.counts)) += 1;
    None
}

/// `response` with `Retry-After: 1`.
fn retry_after_a_second(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert("retry-after", HeaderValue::from_static("1"));
    response
}

/// The host the client called, for the URLs the fake hands back.
fn host(headers: &HeaderMap) -> &str {
    headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
}

impl Stored {
    /// When the group's containers started: its PUT, on the wall clock.
    fn started(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::try_from(self.created.elapsed()).unwrap_or_default())
            .unwrap_or_else(|_| jiff::Timestamp::now())
    }
}

fn new_id(state: &ArmState) -> u64 {
    let mut id = lock(&state.next_id);
    *id += 1;
    *id
}

/// The group as ARM shows it now: read-only fields filled in, secure values hidden, the
/// instance view following the time since the PUT.
fn view(name: &str, params: &(String, String), stored: &Stored, latency: Duration) -> Value {
    let mut group = stored.body.clone();
    let (sub, rg) = params;
    group["id"] = json!(format!(
        "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerInstance/containerGroups/{name}"
    ));
    group["name"] = json!(name);
    group["type"] = json!("Microsoft.ContainerInstance/containerGroups");
    let running = stored.created.elapsed() >= latency;
    let started = stored.started();
    let properties = &mut group["properties"];
    properties["provisioningState"] = json!(if running { "Succeeded" } else { "Creating" });
    properties["instanceView"] =
        json!({"state": if running { "Running" } else { "Pending" }, "events": []});
    if let Some(containers) = properties["containers"].as_array_mut() {
        for container in containers {
            for var in container["properties"]["environmentVariables"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                if let Some(object) = var.as_object_mut() {
                    object.remove("secureValue");
                }
            }
            container["properties"]["instanceView"] = if running {
                json!({"restartCount": 0, "events": [],
                       "currentState": {"state": "Running", "startTime": started.to_string(), "detailStatus": ""}})
            } else {
                json!({"restartCount": 0, "events": [],
                       "currentState": {"state": "Waiting", "detailStatus": "Pulling image"}})
            };
        }
    }
    if running && properties.get("ipAddress").is_some() {
        properties["ipAddress"]["ip"] = json!(stored.ip);
    }
    if let Some(credentials) = properties["imageRegistryCredentials"].as_array_mut() {
        for credential in credentials {
            if let Some(object) = credential.as_object_mut() {
                object.remove("password");
            }
        }
    }
    group
}

async fn put_group(
    State(state): State<Arc<ArmState>>,
    Path((sub, rg, name)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refusal) = gate(&state, &headers, &query, |c| &mut c.puts) {
        return refusal;
    }
    let fault = lock(&state.put_faults).pop_front();
    match fault {
        Some(PutFault::Quota) => {
            return arm_error(
                StatusCode::CONFLICT,
                "ContainerGroupQuotaReached",
                "Resource type 'Microsoft.ContainerInstance/containerGroups' container group quota 'StandardCores' exceeded in region (injected by the test)",
            );
        }
        Some(PutFault::ServiceUnavailable) => {
            return arm_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "The requested resource is not available in the location at this moment (injected by the test)",
            );
        }
        None => {}
    }
    let Ok(body): Result<Value, _> = serde_json::from_slice(&body) else {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            "body is not JSON",
        );
    };
    let problems = state.validator.body_violations(&body);
    if !problems.is_empty() {
        let message = problems.join("; ");
        lock(&state.refused).push(format!("{name}: {message}"));
        return arm_error(StatusCode::BAD_REQUEST, "InvalidRequestContent", &message);
    }
    let id = new_id(&state);
    let existed = {
        let mut groups = lock(&state.groups);
        let existed = groups.contains_key(&name);
        let ip = format!("10.240.{}.{}", (id / 250) % 250, id % 250 + 1);
        groups.insert(
            name.clone(),
            Stored {
                body,
                created: Instant::now(),
                ip,
            },
        );
        existed
    };
    lock(&state.operations).insert(
        id.to_string(),
        Instant::now() + state.behaviour.start_latency,
    );
    let groups = lock(&state.groups);
    let stored = &groups[&name];
    let mut response = json_response(
        if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        &view(&name, &(sub, rg), stored, state.behaviour.start_latency),
    );
    let host = host(&headers);
    let operation = format!("http://{host}/fake/operations/{id}?api-version={API_VERSION}");
    if let Ok(value) = HeaderValue::from_str(&operation) {
        response.headers_mut().insert("azure-asyncoperation", value);
    }
    retry_after_a_second(response)
}

async fn get_group(
    State(state): State<Arc<ArmState>>,
    Path((sub, rg, name)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = gate(&state, &headers, &query, |c| &mut c.gets) {
        return refusal;
    }
    let groups = lock(&state.groups);
    match groups.get(&name) {
        Some(stored) => json_response(
            StatusCode::OK,
            &view(&name, &(sub, rg), stored, state.behaviour.start_latency),
        ),
        None => arm_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("container group {name} not found"),
        ),
    }
}

async fn list(
    State(state): State<Arc<ArmState>>,
    Path((sub, rg)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = gate(&state, &headers, &query, |c| &mut c.lists) {
        return refusal;
    }
    let skip: usize = query
        .get("$skipToken")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let page = state.behaviour.page_size.max(1);
    let groups = lock(&state.groups);
    let value: Vec<Value> = groups
        .iter()
        .skip(skip)
        .take(page)
        .map(|(name, stored)| {
            view(
                name,
                &(sub.clone(), rg.clone()),
                stored,
                state.behaviour.start_latency,
            )
        })
        .collect();
    let mut body = json!({"value": value});
    if skip + page < groups.len() {
        let host = host(&headers);
        body["nextLink"] = json!(format!(
            "http://{host}/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerInstance/containerGroups?api-version={API_VERSION}&$skipToken={}",
            skip + page
        ));
    }
    json_response(StatusCode::OK, &body)
}

async fn delete_group(
    State(state): State<Arc<ArmState>>,
    Path((_sub, _rg, name)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = gate(&state, &headers, &query, |c| &mut c.deletes) {
        return refusal;
    }
    if lock(&state.groups).remove(&name).is_none() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let id = new_id(&state);
    let host = host(&headers);
    let mut response = StatusCode::ACCEPTED.into_response();
    if let Ok(value) = HeaderValue::from_str(&format!(
        "http://{host}/fake/deletions/{id}?api-version={API_VERSION}"
    )) {
        response.headers_mut().insert("location", value);
    }
    retry_after_a_second(response)
}

async fn operation(
    State(state): State<Arc<ArmState>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = gate(&state, &headers, &query, |c| &mut c.polls) {
        return refusal;
    }
    let done_at = lock(&state.operations).get(&id).copied();
    match done_at {
        None => arm_error(StatusCode::NOT_FOUND, "OperationNotFound", &id),
        Some(at) if Instant::now() >= at => {
            json_response(StatusCode::OK, &json!({"status": "Succeeded"}))
        }
        Some(_) => retry_after_a_second(json_response(
            StatusCode::OK,
            &json!({"status": "InProgress"}),
        )),
    }
}

async fn deletion(
    State(state): State<Arc<ArmState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = gate(&state, &headers, &query, |c| &mut c.polls) {
        return refusal;
    }
    StatusCode::OK.into_response()
}

/// Notes each request before it is routed.
async fn record(
    State(state): State<Arc<ArmState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    lock(&state.seen).push(format!("{} {}", request.method(), request.uri().path()));
    next.run(request).await
}

async fn logs(
    State(state): State<Arc<ArmState>>,
    Path((_sub, _rg, name, container)): Path<(String, String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = gate(&state, &headers, &query, |c| &mut c.logs) {
        return refusal;
    }
    let groups = lock(&state.groups);
    let Some(stored) = groups.get(&name) else {
        return arm_error(StatusCode::NOT_FOUND, "ResourceNotFound", &name);
    };
    let known = stored.body["properties"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["name"] == container);
    if !known {
        return arm_error(StatusCode::NOT_FOUND, "ContainerNotFound", &container);
    }
    // A container writes five lines, one a second after its group's PUT: a read sees
    // those written so far, so a follower sees lines arrive.
    let elapsed = stored.created.elapsed();
    let started = stored.started();
    let timestamps = query.get("timestamps").map(String::as_str) == Some("true");
    let written = elapsed.as_secs().min(5) as i64;
    let mut lines: Vec<String> = (1..=written)
        .map(|i| {
            let at = started
                .checked_add(jiff::SignedDuration::from_secs(i))
                .unwrap_or(started);
            let text = format!("{container} line {i}");
            if timestamps {
                format!("{at} {text}")
            } else {
                text
            }
        })
        .collect();
    if let Some(tail) = query.get("tail").and_then(|t| t.parse::<usize>().ok()) {
        let skip = lines.len().saturating_sub(tail);
        lines.drain(..skip);
    }
    let mut content = lines.join("\n");
    if !content.is_empty() {
        content.push('\n');
    }
    json_response(StatusCode::OK, &json!({"content": content}))
}
