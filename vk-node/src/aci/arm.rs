//! The ARM calls the ACI provider makes, for container groups in one resource group:
//! create-or-update, get, list, delete, container logs, and the exec and attach
//! WebSockets. [`ArmClient`] speaks them over
//! HTTPS with a bearer token: `429` (and `503`) wait out `Retry-After`, other server errors
//! back off with jitter, and long-running PUTs and DELETEs are followed to their end
//! through `Azure-AsyncOperation` (or `Location`). Errors map onto [`ProviderError`], so a
//! refused body fails the pod and anything else is retried.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::Secret;
use rand::Rng as _;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::API_VERSION;
use super::arm_types::ContainerGroup;
use super::credentials::TokenSource;
use crate::provider::{ProviderError, TerminalSize};

/// The public ARM endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://management.azure.com";

/// The container-group calls, generic so the provider's logic is tested with a fake.
pub trait ArmApi: Send + Sync + 'static {
    /// Creates or replaces a group and follows the operation to its end; returns the group.
    fn put_group(
        &self,
        name: &str,
        group: &ContainerGroup,
    ) -> impl Future<Output = Result<ContainerGroup, ProviderError>> + Send;
    /// One group, or `None`.
    fn get_group(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ContainerGroup>, ProviderError>> + Send;
    /// Every group in the resource group (all pages).
    fn list_groups(
        &self,
    ) -> impl Future<Output = Result<Vec<ContainerGroup>, ProviderError>> + Send;
    /// Deletes a group and follows the operation to its end; `NotFound` if it was gone.
    fn delete_group(&self, name: &str) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// A container's log (the last `tail` lines), each line prefixed with its RFC 3339
    /// timestamp.
    fn container_logs(
        &self,
        name: &str,
        container: &str,
        tail: Option<usize>,
    ) -> impl Future<Output = Result<String, ProviderError>> + Send;
    /// What keeps the node from running groups, one sentence each: no token, the
    /// resource group missing or closed to the node's identity. Empty when ready.
    fn setup_problems(&self, location: &str) -> impl Future<Output = Vec<String>> + Send;
    /// Asks ACI to run `command` (one executable, no arguments) in a container of group
    /// `name` in a terminal of `size`: the WebSocket to stream it on, and its password.
    fn exec_command(
        &self,
        name: &str,
        container: &str,
        command: &str,
        size: TerminalSize,
    ) -> impl Future<Output = Result<StreamGrant, ProviderError>> + Send {
        let _ = (name, container, command, size);
        async { Err(ProviderError::Invalid("this ARM serves no exec".into())) }
    }
    /// Asks ACI for a container's output stream: the WebSocket and its password.
    fn attach(
        &self,
        name: &str,
        container: &str,
    ) -> impl Future<Output = Result<StreamGrant, ProviderError>> + Send {
        let _ = (name, container);
        async { Err(ProviderError::Invalid("this ARM serves no attach".into())) }
    }
}

/// A WebSocket ACI opened for an exec or attach, and the password that opens it.
pub struct StreamGrant {
    /// `wss://…`.
    pub uri: String,
    /// Sent as the first message (exec) or the `Authorization` header (attach).
    pub password: Secret,
}

/// Everything but unreserved characters (RFC 3986) is escaped in a path segment, so a
/// name cannot end its segment (`/`, `?`, `#`). A name of dots alone would still be a dot
/// segment (URL parsers read `%2E%2E` as `..`): [`named_segment`] refuses those.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'~');

/// `value` as one URL path segment of an ARM resource ID.
fn path_segment(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, SEGMENT).to_string()
}

/// `value` as a path segment naming something: refused when it is empty or dots alone.
fn named_segment(value: &str) -> Result<String, ProviderError> {
    if value.is_empty() || value.chars().all(|c| c == '.') {
        return Err(ProviderError::Invalid(format!(
            "{value:?} cannot name a container"
        )));
    }
    Ok(path_segment(value))
}

/// How hard a call tries.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// The longest single wait (a larger `Retry-After` is cut to this).
    pub max_wait: Duration,
    /// First back-off after a server error (doubles each time).
    pub base_backoff: Duration,
    /// Each request's own timeout.
    pub request_timeout: Duration,
    /// How long a long-running operation is followed before the call gives up (the node
    /// retries it later; the operation goes on at ARM).
    pub operation_deadline: Duration,
    /// Poll interval of a long-running operation without `Retry-After`.
    pub poll_interval: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            max_wait: Duration::from_secs(60),
            base_backoff: Duration::from_millis(500),
            request_timeout: Duration::from_secs(30),
            operation_deadline: Duration::from_secs(600),
            poll_interval: Duration::from_secs(2),
        }
    }
}

/// ARM over HTTPS.
pub struct ArmClient<T: TokenSource> {
    http: reqwest::Client,
    endpoint: String,
    subscription_id: String,
    resource_group: String,
    tokens: Arc<T>,
    policy: RetryPolicy,
}

/// ARM's error body: `{"error": {"code", "message"}}`.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: ErrorDetail,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// An `Azure-AsyncOperation` status document.
#[derive(Debug, Deserialize)]
struct OperationStatus {
    status: String,
    #[serde(default)]
    error: Option<ErrorDetail>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListPage {
    value: Vec<ContainerGroup>,
    #[serde(default)]
    next_link: Option<String>,
}

/// A response that reached us: status, headers, body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// `Retry-After` in seconds (ARM sends seconds; an HTTP date is treated as absent).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Which [`ProviderError`] an ARM error answer is.
pub fn classify(status: StatusCode, body: &[u8]) -> ProviderError {
    let detail = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_default();
    let text = if detail.code.is_empty() && detail.message.is_empty() {
        format!("ARM answered {status}")
    } else {
        format!("ARM answered {status}: {} {}", detail.code, detail.message)
    };
    match status {
        StatusCode::NOT_FOUND => ProviderError::NotFound(text),
        StatusCode::TOO_MANY_REQUESTS => ProviderError::Throttled(text),
        // A token ARM refused is fixed by the credential's refresh, not by failing pods.
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ProviderError::Transient(text),
        // ARM or ACI itself failing: an outage.
        s if s.is_server_error() => ProviderError::Unavailable(text),
        StatusCode::CONFLICT if detail.code.contains("Quota") => ProviderError::Unavailable(text),
        _ => ProviderError::Invalid(text),
    }
}

/// The `{webSocketUri, password}` of an exec or attach answer.
fn grant(body: &[u8], what: &str) -> Result<StreamGrant, ProviderError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        web_socket_uri: String,
        password: String,
    }
    let answer: Answer = serde_json::from_slice(body).map_err(|e| {
        ProviderError::Transient(format!("ARM {what} answer without a WebSocket: {e}"))
    })?;
    Ok(StreamGrant {
        uri: answer.web_socket_uri,
        password: Secret::new(answer.password),
    })
}

/// An operation that ended `Failed`: quota and capacity problems pass with time, the
/// rest (a bad image, a refused body) do not.
fn classify_operation(detail: Option<ErrorDetail>) -> ProviderError {
    let detail = detail.unwrap_or_default();
    let text = format!("ARM operation failed: {} {}", detail.code, detail.message);
    let code = detail.code.to_ascii_lowercase();
    if code.contains("throttl") {
        ProviderError::Throttled(text)
    } else if code.contains("quota")
        || code.contains("unavailable")
        || code.contains("internal")
        || code.contains("capacity")
    {
        ProviderError::Unavailable(text)
    } else {
        ProviderError::Invalid(text)
    }
}

impl<T: TokenSource> ArmClient<T> {
    /// A client for `subscription_id`/`resource_group` at `endpoint` (no trailing slash).
    pub fn new(
        endpoint: &str,
        subscription_id: &str,
        resource_group: &str,
        tokens: Arc<T>,
        policy: RetryPolicy,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(policy.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self {
            http,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            subscription_id: subscription_id.to_owned(),
            resource_group: resource_group.to_owned(),
            tokens,
            policy,
        })
    }

    fn groups_url(&self) -> String {
        format!(
            "{}/subscriptions/{}/resourceGroups/{}/providers/Microsoft.ContainerInstance/containerGroups",
            self.endpoint,
            path_segment(&self.subscription_id),
            path_segment(&self.resource_group)
        )
    }

    fn group_url(&self, name: &str) -> String {
        format!(
            "{}/{}?api-version={API_VERSION}",
            self.groups_url(),
            path_segment(name)
        )
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .policy
            .base_backoff
            .saturating_mul(1 << attempt.min(6))
            .min(self.policy.max_wait);
        base.mul_f64(rand::rng().random_range(0.5..1.0))
    }

    /// One call with retries: `Ok` for any 2xx, the classified error otherwise.
    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ProviderError> {
        let mut last = ProviderError::Transient("no attempt made".into());
        for attempt in 0..self.policy.max_attempts.max(1) {
            let token = self.tokens.bearer().await?;
            let mut request = self
                .http
                .request(method.clone(), url)
                .bearer_auth(token.secret());
            if let Some(body) = body {
                request = request.json(body);
            }
            let wait = match request.send().await {
                Err(error) => {
                    last = ProviderError::Transient(format!("ARM request failed: {error}"));
                    self.backoff(attempt)
                }
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    let body = response
                        .bytes()
                        .await
                        .map_err(|e| ProviderError::Transient(format!("ARM answer cut: {e}")))?
                        .to_vec();
                    if status.is_success() {
                        return Ok(Answer {
                            status,
                            headers,
                            body,
                        });
                    }
                    last = classify(status, &body);
                    match status {
                        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                            retry_after(&headers)
                                .map(|d| d.min(self.policy.max_wait))
                                .unwrap_or_else(|| self.backoff(attempt))
                        }
                        s if s.is_server_error() => self.backoff(attempt),
                        _ => return Err(last),
                    }
                }
            };
            if attempt + 1 < self.policy.max_attempts {
                tracing::debug!(%url, ?wait, error = %last, "ARM call retried");
                tokio::time::sleep(wait).await;
            }
        }
        Err(last)
    }

    /// Follows a long-running operation started by `answer` to its end.
    async fn follow(&self, answer: &Answer) -> Result<(), ProviderError> {
        let header = |name: &str| {
            answer
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        // `Azure-AsyncOperation` names a status document; a `Location` answers 202 until
        // the operation is done.
        let (url, reads_status) = match (header("azure-asyncoperation"), header("location")) {
            (Some(url), _) => (url, true),
            (None, Some(url)) => (url, false),
            (None, None) => return Ok(()),
        };
        let deadline = tokio::time::Instant::now() + self.policy.operation_deadline;
        let mut wait = retry_after(&answer.headers).unwrap_or(self.policy.poll_interval);
        loop {
            if tokio::time::Instant::now() + wait > deadline {
                return Err(ProviderError::Transient(format!(
                    "ARM operation still running after {:?}",
                    self.policy.operation_deadline
                )));
            }
            tokio::time::sleep(wait).await;
            let polled = self.call(Method::GET, &url, None).await?;
            if reads_status {
                let status: OperationStatus = parse(&polled.body, "operation status")?;
                match status.status.as_str() {
                    "Succeeded" => return Ok(()),
                    "Failed" | "Canceled" => return Err(classify_operation(status.error)),
                    _ => {}
                }
            } else if polled.status != StatusCode::ACCEPTED {
                return Ok(());
            }
            wait = retry_after(&polled.headers).unwrap_or(self.policy.poll_interval);
        }
    }
}

fn parse<V: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<V, ProviderError> {
    serde_json::from_slice(body)
        .map_err(|e| ProviderError::Transient(format!("unreadable ARM {what}: {e}")))
}

impl<T: TokenSource> ArmApi for ArmClient<T> {
    async fn put_group(
        &self,
        name: &str,
        group: &ContainerGroup,
    ) -> Result<ContainerGroup, ProviderError> {
        let body = serde_json::to_value(group)
            .map_err(|e| ProviderError::Invalid(format!("container group body: {e}")))?;
        let url = self.group_url(name);
        let answer = self.call(Method::PUT, &url, Some(&body)).await?;
        if answer.status == StatusCode::CREATED
            || answer.headers.contains_key("azure-asyncoperation")
        {
            self.follow(&answer).await?;
            return self.get_group(name).await?.ok_or_else(|| {
                ProviderError::Transient(format!("group {name} gone after its create"))
            });
        }
        parse(&answer.body, "container group")
    }

    async fn get_group(&self, name: &str) -> Result<Option<ContainerGroup>, ProviderError> {
        match self.call(Method::GET, &self.group_url(name), None).await {
            Ok(answer) => parse(&answer.body, "container group").map(Some),
            Err(ProviderError::NotFound(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn setup_problems(&self, location: &str) -> Vec<String> {
        if let Err(error) = self.tokens.bearer().await {
            return vec![format!(
                "no Azure credentials: {error} (AKS: give the controller's ServiceAccount a \
                 workload identity, credentials.azure.workloadIdentityClientId; docs/aks.md)"
            )];
        }
        let (group, subscription) = (&self.resource_group, &self.subscription_id);
        // One page of the groups: it needs the token, the resource group and the right to
        // read it, as every later call does.
        let url = format!("{}?api-version={API_VERSION}", self.groups_url());
        match self.call(Method::GET, &url, None).await {
            Ok(_) => Vec::new(),
            Err(ProviderError::NotFound(detail)) => vec![format!(
                "resource group {group} not found in subscription {subscription}: create it \
                 (az group create --name {group} --location {location}) or set \
                 --aci-resource-group ({detail})"
            )],
            Err(error)
                if ["ARM answered 401", "ARM answered 403"]
                    .iter()
                    .any(|refusal| error.to_string().contains(refusal)) =>
            {
                vec![format!(
                    "Azure refused the node's identity on resource group {group}: {error} (grant \
                 it Contributor on the resource group; docs/aks.md)"
                )]
            }
            Err(error) => vec![format!(
                "cannot list the container groups of resource group {group}: {error}"
            )],
        }
    }

    async fn list_groups(&self) -> Result<Vec<ContainerGroup>, ProviderError> {
        let mut groups = Vec::new();
        let mut url = format!("{}?api-version={API_VERSION}", self.groups_url());
        loop {
            let answer = self.call(Method::GET, &url, None).await?;
            let page: ListPage = parse(&answer.body, "container group list")?;
            groups.extend(page.value);
            match page.next_link {
                Some(next) if !next.is_empty() => url = next,
                _ => return Ok(groups),
            }
        }
    }

    async fn delete_group(&self, name: &str) -> Result<(), ProviderError> {
        let answer = self
            .call(Method::DELETE, &self.group_url(name), None)
            .await?;
        match answer.status {
            StatusCode::NO_CONTENT => Err(ProviderError::NotFound(format!("group {name}"))),
            StatusCode::ACCEPTED => self.follow(&answer).await,
            _ => Ok(()),
        }
    }

    async fn exec_command(
        &self,
        name: &str,
        container: &str,
        command: &str,
        size: TerminalSize,
    ) -> Result<StreamGrant, ProviderError> {
        let url = format!(
            "{}/{}/containers/{}/exec?api-version={API_VERSION}",
            self.groups_url(),
            path_segment(name),
            named_segment(container)?
        );
        let body = serde_json::json!({
            "command": command,
            "terminalSize": {"rows": size.height, "cols": size.width},
        });
        let answer = self.call(Method::POST, &url, Some(&body)).await?;
        grant(&answer.body, "exec")
    }

    async fn attach(&self, name: &str, container: &str) -> Result<StreamGrant, ProviderError> {
        let url = format!(
            "{}/{}/containers/{}/attach?api-version={API_VERSION}",
            self.groups_url(),
            path_segment(name),
            named_segment(container)?
        );
        let answer = self.call(Method::POST, &url, None).await?;
        grant(&answer.body, "attach")
    }

    async fn container_logs(
        &self,
        name: &str,
        container: &str,
        tail: Option<usize>,
    ) -> Result<String, ProviderError> {
        let mut url = format!(
            "{}/{}/containers/{}/logs?api-version={API_VERSION}&timestamps=true",
            self.groups_url(),
            path_segment(name),
            named_segment(container)?
        );
        if let Some(tail) = tail {
            url.push_str(&format!("&tail={tail}"));
        }
        let answer = self.call(Method::GET, &url, None).await?;
        #[derive(Deserialize)]
        struct Logs {
            #[serde(default)]
            content: Option<String>,
        }
        Ok(parse::<Logs>(&answer.body, "logs")?
            .content
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_their_path_segment() {
        assert_eq!(path_segment("spillway-u1_x"), "spillway-u1_x");
        assert_eq!(path_segment("../../x"), "%2E%2E%2F%2E%2E%2Fx");
        assert_eq!(path_segment("a?b#c"), "a%3Fb%23c");
        let url = url::Url::parse(&format!(
            "https://arm.invalid/groups/g/containers/{}/logs",
            path_segment("../../../../subscriptions")
        ))
        .unwrap();
        assert_eq!(
            url.path_segments().unwrap().count(),
            5,
            "no segment walked up: {url}"
        );
        for dots in ["", ".", ".."] {
            assert!(named_segment(dots).is_err(), "{dots:?}");
        }
        assert_eq!(named_segment("app").unwrap(), "app");
    }

    #[test]
    fn errors_map_to_what_the_node_does_with_them() {
        let body = br#"{"error":{"code":"InvalidContainerGroupName","message":"bad name"}}"#;
        let invalid = classify(StatusCode::BAD_REQUEST, body);
        assert_eq!(
            invalid,
            ProviderError::Invalid(
                "ARM answered 400 Bad Request: InvalidContainerGroupName bad name".into()
            )
        );
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, b""),
            ProviderError::Throttled(_)
        ));
        assert!(classify(StatusCode::UNAUTHORIZED, b"").is_retryable());
        assert!(classify(StatusCode::BAD_GATEWAY, b"not json").is_retryable());
        assert!(matches!(
            classify(StatusCode::NOT_FOUND, b""),
            ProviderError::NotFound(_)
        ));
        let quota = br#"{"error":{"code":"ContainerGroupQuotaReached","message":"limit"}}"#;
        assert!(matches!(
            classify(StatusCode::CONFLICT, quota),
            ProviderError::Unavailable(_)
        ));
        let outage = br#"{"error":{"code":"ServiceUnavailable","message":"try later"}}"#;
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, outage),
            ProviderError::Unavailable(_)
        ));
    }

    #[test]
    fn failed_operations_are_retried_only_when_time_helps() {
        let op = |code: &str| {
            classify_operation(Some(ErrorDetail {
                code: code.into(),
                message: String::new(),
            }))
        };
        assert!(matches!(
            op("ServiceUnavailable"),
            ProviderError::Unavailable(_)
        ));
        assert!(matches!(
            op("ContainerGroupQuotaReached"),
            ProviderError::Unavailable(_)
        ));
        assert!(!op("InaccessibleImage").is_retryable());
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
