//! Helpers for the end-to-end tests: reach the test bed, make namespaces that clean up
//! after themselves, wait for conditions with a deadline, register loopback webhooks.

pub mod aci_spec;
pub mod aws_fault_proxy;
pub mod chart;
pub mod doc_commands;
pub mod fake_arm;
pub mod fake_shell;
pub mod fake_ssm;
pub mod hostile_clients;
pub mod loopback_server;
pub mod probe_target;
pub mod pty;
pub mod split_proxy;
pub mod stall_proxy;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_owned()
}

/// The test bed's run directory (`e2e/.run`).
pub fn run_dir() -> PathBuf {
    repo_root().join("e2e/.run")
}

/// The `spillway` binary built by `make` before the e2e tests run (`SPILLWAY_BIN`
/// overrides it, e.g. with a release build for benchmarks).
pub fn spillway_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SPILLWAY_BIN") {
        return Ok(PathBuf::from(path));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let path = target.join("debug/spillway");
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo build -p spillway` first",
            path.display()
        );
    }
    Ok(path)
}

/// A client for the test bed (its kubeconfig, whatever `KUBECONFIG` says).
pub async fn client() -> anyhow::Result<Client> {
    spillway_common::tls::install_crypto_provider();
    let path = run_dir().join("kubeconfig");
    let kubeconfig = Kubeconfig::read_from(&path)
        .with_context(|| format!("reading {} (is the test bed up?)", path.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Polls `check` every 200 ms until it returns true, failing after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) => last_error = Some(error),
        }
        if tokio::time::Instant::now() > deadline {
            match last_error {
                Some(error) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {error:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `spillway status -o json -n <namespace>` against the test bed, parsed.
pub fn status_json(namespace: &str) -> anyhow::Result<serde_json::Value> {
    // The default config, whatever chart release another test has installed meanwhile.
    let defaults = tempfile::NamedTempFile::new()?;
    let output = std::process::Command::new(spillway_binary()?)
        .args(["status", "-o", "json", "-n", namespace, "--config"])
        .arg(defaults.path())
        .env("KUBECONFIG", run_dir().join("kubeconfig"))
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "spillway status: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// Waits until no pod is bound to the fixed regular nodes (`kwok-node-*`): earlier tests
/// cleaned up.
pub async fn regular_nodes_idle(client: &Client, within: Duration) -> anyhow::Result<()> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::all(client.clone());
    wait_until(
        "regular nodes idle (earlier tests' pods gone)",
        within,
        || async {
            Ok(!pods
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .any(|p| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_deref())
                        .is_some_and(|n| n.starts_with("kwok-node-"))
                }))
        },
    )
    .await
}

/// A namespace of its own for one test, deleted when dropped (even on panic).
pub struct TestNamespace {
    /// Its name.
    pub name: String,
}

impl TestNamespace {
    /// Creates `<prefix>-<random>` labelled for the test.
    pub async fn create(client: &Client, prefix: &str) -> anyhow::Result<Self> {
        let suffix: u32 = std::process::id()
            ^ (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .subsec_nanos());
        let name = format!("{prefix}-{:x}", suffix & 0xffffff);
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"spillway.io/e2e": "true"}}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(Self { name })
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        delete_with_kubectl(&["namespace", &self.name]);
    }
}

/// Deletes an object with the test bed's kubectl, without waiting (usable in `Drop`).
pub fn delete_with_kubectl(what: &[&str]) {
    let kubectl = repo_root().join("e2e/.build/bin/kubectl");
    let _ = std::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(run_dir().join("kubeconfig"))
        .arg("delete")
        .args(what)
        .args(["--wait=false", "--ignore-not-found"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// A MutatingWebhookConfiguration deleted when dropped.
pub struct RegisteredWebhook {
    /// Its name.
    pub name: String,
}

impl Drop for RegisteredWebhook {
    fn drop(&mut self) {
        delete_with_kubectl(&["mutatingwebhookconfiguration", &self.name]);
    }
}

/// Options of a loopback webhook registration.
pub struct WebhookRegistration<'a> {
    /// Configuration name.
    pub name: &'a str,
    /// `https://127.0.0.1:PORT/mutate`.
    pub url: &'a str,
    /// PEM of the CA that signed the server certificate.
    pub ca_pem: &'a str,
    /// Only pods in this namespace reach it.
    pub namespace: &'a str,
    /// `Fail` or `Ignore`.
    pub failure_policy: &'a str,
}

/// Registers a Pod CREATE webhook scoped to one namespace.
pub async fn register_webhook(
    client: &Client,
    options: WebhookRegistration<'_>,
) -> anyhow::Result<RegisteredWebhook> {
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(options.ca_pem);
    let config: MutatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
        "metadata": {"name": options.name},
        "webhooks": [{
            "name": format!("{}.e2e.spillway.io", options.name),
            "clientConfig": {"url": options.url, "caBundle": ca_bundle},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": options.namespace}},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "failurePolicy": options.failure_policy,
            "reinvocationPolicy": "IfNeeded",
            "timeoutSeconds": 2
        }]
    }))?;
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .with_context(|| format!("registering webhook {}", options.name))?;
    Ok(RegisteredWebhook {
        name: options.name.to_owned(),
    })
}

/// Deletes every pod-owning object of a kind quickly (helper for cleanup in tests).
pub async fn delete_now<K>(api: &Api<K>, name: &str) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.delete(name, &DeleteParams::default()).await?;
    Ok(())
}

/// The file a process started with log name `log` writes to: `e2e/.run/logs/<log>.log`.
pub fn log_path(log: &str) -> PathBuf {
    run_dir().join("logs").join(format!("{log}.log"))
}

/// A `spillway` process killed (SIGKILL) when dropped; its stderr goes to
/// `e2e/.run/logs/<log>.log`.
pub struct SpillwayProcess {
    /// The child.
    pub child: std::process::Child,
}

impl SpillwayProcess {
    /// Starts `spillway ARGS…` against the test bed.
    pub fn start(args: &[String], log: &str, extra_env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let path = log_path(log);
        if let Some(logs) = path.parent() {
            std::fs::create_dir_all(logs)?;
        }
        let mut command = std::process::Command::new(spillway_binary()?);
        command
            .args(args)
            .env("KUBECONFIG", run_dir().join("kubeconfig"))
            .env("SPILLWAY_LOG", "info,spillway_vk_node=debug")
            // Nothing a test starts asks the instance metadata (off loopback) for a region
            // or credentials.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(std::process::Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            );
        for (key, value) in extra_env {
            command.env(key, value);
        }
        Ok(Self {
            child: command.spawn()?,
        })
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for SpillwayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Flags that run a virtual node named `node` on the test bed with its PKI.
pub fn vk_node_args(node: &str, provider: &str) -> anyhow::Result<Vec<String>> {
    let pki = run_dir().join("pki");
    let path = |f: &str| pki.join(f).display().to_string();
    Ok(vec![
        "vk-node".into(),
        "--vk-provider".into(),
        provider.into(),
        "--node-name".into(),
        node.into(),
        "--kubelet-listen".into(),
        format!("127.0.0.1:{}", free_port()?),
        "--kubelet-tls-cert".into(),
        path("kubelet.crt"),
        "--kubelet-tls-key".into(),
        path("kubelet.key"),
        "--kubelet-client-ca".into(),
        path("ca.crt"),
        "--admin-addr".into(),
        format!("127.0.0.1:{}", free_port()?),
        "--leader-election-namespace".into(),
        "default".into(),
        "--sync-interval-seconds".into(),
        "1".into(),
    ])
}

/// The `--kubelet-listen` address among a node's flags.
pub fn kubelet_listen_addr(args: &[String]) -> anyhow::Result<String> {
    args.iter()
        .position(|a| a == "--kubelet-listen")
        .and_then(|at| args.get(at + 1))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no --kubelet-listen among {args:?}"))
}

/// GET `path` (sent as written, escapes kept) on a node's kubelet API as the apiserver
/// calls it (its kubelet client certificate): status code and body.
pub async fn kubelet_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let pki = run_dir().join("pki");
    let mut pem = std::fs::read(pki.join("apiserver-kubelet-client.crt"))?;
    pem.extend(std::fs::read(pki.join("apiserver-kubelet-client.key"))?);
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(
            pki.join("ca.crt"),
        )?)?)
        .identity(reqwest::Identity::from_pem(&pem)?)
        .timeout(Duration::from_secs(60))
        .build()?;
    let response = client.get(format!("https://{addr}{path}")).send().await?;
    Ok((response.status().as_u16(), response.text().await?))
}

/// The test bed's kubectl with `args`; returns stdout, failing on a non-zero exit.
pub fn kubectl(args: &[&str]) -> anyhow::Result<String> {
    let output = std::process::Command::new(repo_root().join("e2e/.build/bin/kubectl"))
        .arg("--kubeconfig")
        .arg(run_dir().join("kubeconfig"))
        .args(args)
        .output()?;
    if !output.status.success() {
        bail!(
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// `kubectl -n <namespace> <args>` (the test bed's kubectl and kubeconfig) with `stdin`
/// written to it and closed; stopped after 30 s.
pub fn kubectl_with_stdin(
    namespace: &str,
    args: &[&str],
    stdin: &[u8],
) -> anyhow::Result<std::process::Output> {
    use std::io::Write;
    let mut child = std::process::Command::new("timeout")
        .arg("30")
        .arg(repo_root().join("e2e/.build/bin/kubectl"))
        .arg("--kubeconfig")
        .arg(run_dir().join("kubeconfig"))
        .args(["-n", namespace])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().expect("piped").write_all(stdin)?;
    Ok(child.wait_with_output()?)
}

/// Starts `kubectl logs -f` of a pod: the process and its piped stdout.
pub fn kubectl_logs_follow(
    namespace: &str,
    pod: &str,
) -> anyhow::Result<(std::process::Child, std::process::ChildStdout)> {
    let mut child = std::process::Command::new(repo_root().join("e2e/.build/bin/kubectl"))
        .arg("--kubeconfig")
        .arg(run_dir().join("kubeconfig"))
        .args(["logs", "-f", "-n", namespace, pod])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("kubectl's stdout was not piped"))?;
    Ok((child, stdout))
}

/// `kubectl logs -f` of a pod, read on a thread of its own until it has `lines` lines.
pub struct LogFollower {
    child: std::process::Child,
    reader: std::thread::JoinHandle<Vec<String>>,
}

impl LogFollower {
    /// Starts following `pod` in `namespace`.
    pub fn start(namespace: &str, pod: &str, lines: usize) -> anyhow::Result<Self> {
        let (child, stdout) = kubectl_logs_follow(namespace, pod)?;
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .take(lines)
                .collect()
        });
        Ok(Self { child, reader })
    }

    /// Waits (at most `within`) for the lines, then stops kubectl and returns them.
    pub async fn lines(mut self, within: Duration) -> anyhow::Result<Vec<String>> {
        let reader = self.reader;
        let waited = wait_until(
            "the followed stream to deliver its lines",
            within,
            || async { Ok(reader.is_finished()) },
        )
        .await;
        let _ = self.child.kill();
        let _ = self.child.wait();
        waited?;
        reader
            .join()
            .map_err(|_| anyhow::anyhow!("the log reader panicked"))
    }
}

/// A pod manifest bound directly to `node` (no scheduler involved), tolerating its taint
/// and opted in by its own annotation (a bare pod is its own workload; the node refuses
/// pods of workloads that did not opt in).
pub fn pod_on_node(
    name: &str,
    node: &str,
    extra_spec: serde_json::Value,
) -> anyhow::Result<k8s_openapi::api::core::v1::Pod> {
    let mut spec = serde_json::json!({
        "nodeName": node,
        "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [{"name": "app", "image": "nginx:1.27", "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}}}],
        "terminationGracePeriodSeconds": 5
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    Ok(serde_json::from_value(
        serde_json::json!({"metadata": {"name": name, "labels": {"app": name},
            "annotations": {"spillway.io/burst": "true"}}, "spec": spec}),
    )?)
}

/// Deletes a Node, and the pods still bound to it, when dropped.
pub struct NodeCleanupGuard(pub String);

impl Drop for NodeCleanupGuard {
    fn drop(&mut self) {
        remove_node_and_its_pods(&self.0);
    }
}

/// Deletes a virtual Node and force-removes the pods bound to it: no kubelet is left to
/// confirm their deletion and the test bed runs no pod garbage collector, so they (and
/// their namespaces) would otherwise stay Terminating.
pub fn remove_node_and_its_pods(node: &str) {
    let _ = kubectl(&[
        "delete",
        "pods",
        "--all-namespaces",
        "--field-selector",
        &format!("spec.nodeName={node}"),
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    delete_with_kubectl(&["node", node]);
}

/// The variables `e2e/testbed up` wrote to `e2e/.run/env`.
pub fn testbed_env() -> anyhow::Result<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(run_dir().join("env"))
        .context("reading e2e/.run/env (is the test bed up?)")?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// A Deployment of `replicas` nginx pods requesting `cpu` and 128Mi, labelled `app=<name>`.
pub fn deployment(
    name: &str,
    replicas: i32,
    cpu: &str,
    annotations: serde_json::Value,
) -> anyhow::Result<k8s_openapi::api::apps::v1::Deployment> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.27",
                    "resources": {"requests": {"cpu": cpu, "memory": "128Mi"}}}]}
            }
        }
    }))?)
}

/// Sets a Deployment's `spec.replicas`.
pub async fn scale(
    api: &Api<k8s_openapi::api::apps::v1::Deployment>,
    name: &str,
    replicas: i32,
) -> anyhow::Result<()> {
    let patch = kube::api::Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}}));
    api.patch(name, &kube::api::PatchParams::default(), &patch)
        .await?;
    Ok(())
}

/// The phase of pod `name`, if it exists and has one.
pub async fn phase(
    api: &Api<k8s_openapi::api::core::v1::Pod>,
    name: &str,
) -> anyhow::Result<Option<String>> {
    Ok(api.get_opt(name).await?.and_then(|p| p.status?.phase))
}

/// Waits until pod `name` is Running.
pub async fn wait_running(
    api: &Api<k8s_openapi::api::core::v1::Pod>,
    name: &str,
    within: Duration,
) -> anyhow::Result<()> {
    wait_until(&format!("{name} Running"), within, || async {
        Ok(phase(api, name).await?.as_deref() == Some("Running"))
    })
    .await
}

/// A namespace and a virtual node named after it, both removed when dropped.
pub struct NodeFixture {
    /// The test's client.
    pub client: Client,
    /// The test's namespace.
    pub ns: TestNamespace,
    /// `spillway-<provider>-<namespace>`.
    pub node_name: String,
    _cleanup: NodeCleanupGuard,
}

impl NodeFixture {
    /// Creates the namespace `<prefix>-…` and names the node.
    pub async fn new(prefix: &str, provider: &str) -> anyhow::Result<Self> {
        let client = client().await?;
        let ns = TestNamespace::create(&client, prefix).await?;
        let node_name = format!("spillway-{provider}-{}", ns.name);
        Ok(Self {
            client,
            _cleanup: NodeCleanupGuard(node_name.clone()),
            node_name,
            ns,
        })
    }

    /// Creates the namespace `<prefix>-…` for a node with a fixed name (the name RBAC
    /// grants name, `spillway-<provider>`): one test at a time may use it.
    pub async fn named(prefix: &str, node_name: &str) -> anyhow::Result<Self> {
        let client = client().await?;
        let ns = TestNamespace::create(&client, prefix).await?;
        remove_node_and_its_pods(node_name);
        Ok(Self {
            client,
            _cleanup: NodeCleanupGuard(node_name.to_owned()),
            node_name: node_name.to_owned(),
            ns,
        })
    }

    /// Starts `spillway <args>` as this fixture's node, binds pod `pod` (one `app`
    /// container, [`pod_on_node`]) to it and waits until it runs; the process stops when
    /// the returned value drops.
    pub async fn start_with_running_pod(
        &self,
        args: &[String],
        pod: &str,
    ) -> anyhow::Result<SpillwayProcess> {
        let process = SpillwayProcess::start(args, &format!("vk-{}", self.ns.name), &[])?;
        self.pods()
            .create(
                &kube::api::PostParams::default(),
                &pod_on_node(pod, &self.node_name, serde_json::json!({}))?,
            )
            .await?;
        wait_running(&self.pods(), pod, std::time::Duration::from_secs(60)).await?;
        Ok(process)
    }

    /// The namespace's pods.
    pub fn pods(&self) -> Api<k8s_openapi::api::core::v1::Pod> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }
}

/// A `spillway webhook` process on loopback with a throw-away CA.
pub struct WebhookUnderTest {
    /// The process.
    pub process: SpillwayProcess,
    /// HTTPS port of `/mutate`.
    pub port: u16,
    /// Admin port.
    pub admin_port: u16,
    /// PEM of the CA that signed its certificate (the registration's `caBundle`).
    pub ca_pem: String,
    _dir: tempfile::TempDir,
}

impl WebhookUnderTest {
    /// Starts the webhook with `config` as its operator config, logging to
    /// `e2e/.run/logs/<log>.log`, and waits until its index has synced.
    pub async fn start(log: &str, config: &str) -> anyhow::Result<Self> {
        Self::start_with_env(log, config, &[]).await
    }

    /// [`Self::start`] with extra environment (e.g. a `KUBECONFIG` of its own).
    pub async fn start_with_env(
        log: &str,
        config: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_with(log, config, &[], env).await
    }

    /// [`Self::start`] with extra flags and environment.
    pub async fn start_with(
        log: &str,
        config: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let pki = spillway_common::pki::issue(&["127.0.0.1"]);
        let file = |name: &str| dir.path().join(name).display().to_string();
        std::fs::write(file("tls.crt"), &pki.cert_pem)?;
        std::fs::write(file("tls.key"), &pki.key_pem)?;
        std::fs::write(file("config.yaml"), config)?;
        let (port, admin_port) = (free_port()?, free_port()?);
        let args: Vec<String> = vec![
            "webhook".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--tls-cert".into(),
            file("tls.crt"),
            "--tls-key".into(),
            file("tls.key"),
            "--config".into(),
            file("config.yaml"),
            "--admin-addr".into(),
            format!("127.0.0.1:{admin_port}"),
        ];
        let args: Vec<String> = args
            .into_iter()
            .chain(extra_args.iter().map(|a| a.to_string()))
            .collect();
        let process = SpillwayProcess::start(&args, log, env)?;
        wait_until(
            "webhook ready (index synced)",
            Duration::from_secs(30),
            || async {
                let status = std::process::Command::new("curl")
                    .args(["-sf", &format!("http://127.0.0.1:{admin_port}/readyz")])
                    .stdout(std::process::Stdio::null())
                    .status()?;
                Ok(status.success())
            },
        )
        .await?;
        Ok(Self {
            process,
            port,
            admin_port,
            ca_pem: pki.ca_pem,
            _dir: dir,
        })
    }

    /// `https://127.0.0.1:<port>/mutate`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/mutate", self.port)
    }

    /// Registers it for pod creations in `namespace` (the configuration is named after
    /// the namespace; failurePolicy Ignore, as the chart sets it).
    pub async fn register_in(
        &self,
        client: &Client,
        namespace: &str,
    ) -> anyhow::Result<RegisteredWebhook> {
        register_webhook(
            client,
            WebhookRegistration {
                name: namespace,
                url: &self.url(),
                ca_pem: &self.ca_pem,
                namespace,
                failure_policy: "Ignore",
            },
        )
        .await
    }
}

/// Applies `deploy/rbac.yaml` and writes a kubeconfig that authenticates as the service
/// account `spillway-system/<account>` (a short-lived token), so a component runs with
/// exactly the permissions the manifests grant.
pub fn kubeconfig_for_service_account(account: &str) -> anyhow::Result<PathBuf> {
    // Two tests applying at once both try to create the namespace, and one of them gets
    // AlreadyExists: one apply at a time.
    static APPLY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    {
        let _one_at_a_time = APPLY.lock().unwrap_or_else(|p| p.into_inner());
        for file in [
            "deploy/rbac.yaml",
            "deploy/virtual-node-policy.yaml",
            "deploy/controller-policy.yaml",
        ] {
            kubectl(&["apply", "-f", &repo_root().join(file).display().to_string()])?;
        }
    }
    let token = kubectl(&[
        "create",
        "token",
        account,
        "-n",
        "spillway-system",
        "--duration=1h",
    ])?;
    kubeconfig_for_token(account, token.trim())
}

/// Writes a kubeconfig for the test bed's apiserver that authenticates with `token`, named
/// after `user`.
pub fn kubeconfig_for_token(user: &str, token: &str) -> anyhow::Result<PathBuf> {
    let env = testbed_env()?;
    let pki = &env["SPILLWAY_TESTBED_PKI"];
    let server = std::fs::read_to_string(run_dir().join("kubeconfig"))?
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: ").map(str::to_owned))
        .context("no server in the test bed's kubeconfig")?;
    let path = run_dir().join(format!("kubeconfig-{user}"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testbed\n  cluster:\n    server: {server}\n    certificate-authority: {pki}/ca.crt\n\
             users:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: sa\n  context: {{cluster: testbed, user: {user}}}\ncurrent-context: sa\n",
        ),
    )?;
    Ok(path)
}

/// Waits until pod `name` no longer exists (the node removed it after stopping it).
pub async fn wait_removed(
    api: &Api<k8s_openapi::api::core::v1::Pod>,
    name: &str,
) -> anyhow::Result<()> {
    wait_until(
        &format!("{name} removed by the node"),
        Duration::from_secs(30),
        || async { Ok(api.get_opt(name).await?.is_none()) },
    )
    .await
}

/// `spillway run` on loopback: webhook (self-made certificate, registered through
/// `--webhook-url`), controller and an embedded mock virtual node advertised as Fargate.
pub struct RunUnderTest {
    /// The process.
    pub process: SpillwayProcess,
    /// Admin port (`/metrics`).
    pub admin_port: u16,
    /// The MutatingWebhookConfiguration it registered.
    pub webhook_name: String,
    /// Its virtual node.
    pub node_name: String,
    /// Its config file (rewrite it to reload).
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl RunUnderTest {
    /// Starts it with `config`, its Leases in `namespace`, logging to
    /// `e2e/.run/logs/<name>.log`; waits until the index synced and the node exists.
    pub async fn start(name: &str, namespace: &str, config: &str) -> anyhow::Result<Self> {
        Self::start_with_env(name, namespace, config, &[]).await
    }

    /// As [`Self::start`], with `env` added to its environment (the mock's
    /// `SPILLWAY_MOCK_*` settings, say).
    pub async fn start_with_env(
        name: &str,
        namespace: &str,
        config: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, config)?;
        let (port, admin_port) = (free_port()?, free_port()?);
        let pki = run_dir().join("pki");
        let path = |f: &str| pki.join(f).display().to_string();
        let node_name = format!("spillway-fargate-{name}");
        let webhook_name = format!("spillway-{name}");
        let args: Vec<String> = [
            "run",
            "--webhook-url",
            &format!("https://127.0.0.1:{port}/mutate"),
            "--webhook-name",
            &webhook_name,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--config",
            &config_path.display().to_string(),
            "--reload-interval-seconds",
            "1",
            "--reconcile-interval-seconds",
            "1",
            "--vk-provider",
            "mock",
            "--advertise-provider",
            "fargate",
            "--mock-start-latency-ms",
            "300",
            "--node-name",
            &node_name,
            "--kubelet-listen",
            &format!("127.0.0.1:{}", free_port()?),
            "--kubelet-tls-cert",
            &path("kubelet.crt"),
            "--kubelet-tls-key",
            &path("kubelet.key"),
            "--kubelet-client-ca",
            &path("ca.crt"),
            "--leader-election-namespace",
            namespace,
            "--sync-interval-seconds",
            "1",
            "--admin-addr",
            &format!("127.0.0.1:{admin_port}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let process = SpillwayProcess::start(&args, name, env)?;
        let this = Self {
            process,
            admin_port,
            webhook_name,
            node_name,
            config_path,
            _dir: dir,
        };
        let client = client().await?;
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
        wait_until(
            "spillway run ready (index synced, node registered)",
            Duration::from_secs(30),
            || async {
                let ready = std::process::Command::new("curl")
                    .args(["-sf", &format!("http://127.0.0.1:{admin_port}/readyz")])
                    .stdout(std::process::Stdio::null())
                    .status()?
                    .success();
                Ok(ready && nodes.get_opt(&this.node_name).await?.is_some())
            },
        )
        .await?;
        Ok(this)
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics(&self) -> anyhow::Result<String> {
        metrics_text(self.admin_port)
    }

    /// Stops it with SIGTERM (a clean shutdown) and waits for it to exit.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.process.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        Ok(self.process.child.wait()?)
    }
}

impl Drop for RunUnderTest {
    fn drop(&mut self) {
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
        delete_with_kubectl(&["mutatingwebhookconfiguration", &self.webhook_name]);
        remove_node_and_its_pods(&self.node_name);
    }
}

/// The Prometheus text served on `127.0.0.1:<port>/metrics`.
pub fn metrics_text(port: u16) -> anyhow::Result<String> {
    let output = std::process::Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "scraping 127.0.0.1:{port}/metrics failed"
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// The value of the sample `series` (name with its labels exactly as exposed, e.g.
/// `spillway_burst_ratio{namespace="a",workload="b"}`) in Prometheus text.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// A virtual node object that kwok keeps Ready (its pods Running), standing in for a
/// virtual kubelet where only the Node's labels and taint matter.
pub fn virtual_node(name: &str) -> anyhow::Result<k8s_openapi::api::core::v1::Node> {
    virtual_node_of(name, "fargate")
}

/// [`virtual_node`] for `provider` (its label and taint value).
pub fn virtual_node_of(
    name: &str,
    provider: &str,
) -> anyhow::Result<k8s_openapi::api::core::v1::Node> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {"type": "virtual-kubelet", "spillway.io/provider": provider,
                       "kubernetes.io/role": "agent", "kubernetes.io/os": "linux", "kubernetes.io/hostname": name}
        },
        "spec": {"taints": [{"key": "virtual-kubelet.io/provider", "value": provider, "effect": "NoSchedule"}]},
        "status": {"allocatable": {"cpu": "100", "memory": "400Gi", "pods": "500"},
                   "capacity": {"cpu": "100", "memory": "400Gi", "pods": "500"}}
    }))?)
}

/// A `spillway controller` process (no embedded node) leading through a Lease in
/// `lease_namespace`, passing every second, its admin port on loopback.
pub struct ControllerUnderTest {
    /// The process.
    pub process: SpillwayProcess,
    /// Admin port (`/metrics`).
    pub admin_port: u16,
}

impl ControllerUnderTest {
    /// Starts it with `extra` flags and environment, logging to `e2e/.run/logs/<log>.log`.
    pub fn start(
        log: &str,
        lease_namespace: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let admin_port = free_port()?;
        let admin = format!("127.0.0.1:{admin_port}");
        let base = [
            "controller",
            "--leader-election-namespace",
            lease_namespace,
            "--reconcile-interval-seconds",
            "1",
            "--admin-addr",
            &admin,
        ];
        let args: Vec<String> = base.iter().chain(extra).map(|s| s.to_string()).collect();
        Ok(Self {
            process: SpillwayProcess::start(&args, log, env)?,
            admin_port,
        })
    }

    /// `spillway_controller_leader` as it reads now (`None` while the port is not up).
    pub fn leader(&self) -> Option<f64> {
        sample(
            &metrics_text(self.admin_port).unwrap_or_default(),
            "spillway_controller_leader",
        )
    }

    /// Waits until it leads: its watches listed and it holds the Lease.
    pub async fn wait_leading(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_until("the controller leads", timeout, || async {
            Ok(self.leader() == Some(1.0))
        })
        .await
    }
}

/// The `--admin-addr` port among a process's flags.
pub fn admin_port(args: &[String]) -> anyhow::Result<u16> {
    args.iter()
        .position(|a| a == "--admin-addr")
        .and_then(|at| args.get(at + 1))
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|port| port.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no --admin-addr among {args:?}"))
}

/// Whether the Node `node` carries the `spillway.io/provider-degraded` taint.
pub async fn has_degraded_taint(client: &Client, node: &str) -> anyhow::Result<bool> {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    Ok(nodes
        .get(node)
        .await?
        .spec
        .and_then(|spec| spec.taints)
        .unwrap_or_default()
        .iter()
        .any(|taint| taint.key == "spillway.io/provider-degraded"))
}

/// Waits until `spillway_provider_ready{node,provider}` on the admin port says `ready`
/// (1) or not (0).
pub async fn wait_provider_ready(
    admin_port: u16,
    node: &str,
    provider: &str,
    ready: bool,
    within: Duration,
) -> anyhow::Result<()> {
    let want = if ready { 1.0 } else { 0.0 };
    let what = if ready {
        "the set-up ready"
    } else {
        "the set-up check's verdict: not ready"
    };
    wait_until(what, within, || {
        let verdict = provider_ready(admin_port, node, provider);
        async move { Ok(verdict == Some(want)) }
    })
    .await
}

/// `spillway_provider_ready{node,provider}` on the admin port, if exported yet.
pub fn provider_ready(admin_port: u16, node: &str, provider: &str) -> Option<f64> {
    let series = format!("spillway_provider_ready{{node=\"{node}\",provider=\"{provider}\"}}");
    metrics_text(admin_port)
        .ok()
        .and_then(|metrics| sample(&metrics, &series))
}
