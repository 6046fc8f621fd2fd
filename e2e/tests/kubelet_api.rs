//! The virtual node's kubelet API as Kubernetes tools use it, on the test bed: `/pods`,
//! `/runningpods/`, `/stats/summary` and `/metrics/resource` read with the apiserver's
//! kubelet client certificate and with ServiceAccount tokens (TokenReview), callers
//! refused as a kubelet refuses them, `kubectl top` through metrics-server (which calls the
//! node with its own ServiceAccount token), virtual-kubelet's Events for missing
//! ConfigMaps and Secrets, lifecycle Events, and a deleted Node coming back.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use spillway_e2e::{
    NodeFixture, SpillwayProcess, kubectl, pod_on_node, run_dir, vk_node_args, wait_until,
};

/// How a test calls the node.
enum Caller<'a> {
    /// No credentials at all.
    Anonymous,
    /// A client certificate and key from the test bed's PKI directory.
    Certificate(&'a str),
    /// `Authorization: Bearer …`.
    Token(&'a str),
}

/// GET `path` on the kubelet API at `addr`: status code and body.
async fn get(addr: &str, path: &str, caller: Caller<'_>) -> anyhow::Result<(u16, String)> {
    let pki = run_dir().join("pki");
    let ca = std::fs::read(pki.join("ca.crt"))?;
    let mut builder = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .timeout(Duration::from_secs(15));
    if let Caller::Certificate(name) = caller {
        let mut pem = std::fs::read(pki.join(format!("{name}.crt")))?;
        pem.extend(std::fs::read(pki.join(format!("{name}.key")))?);
        builder = builder.identity(reqwest::Identity::from_pem(&pem)?);
    }
    let mut request = builder.build()?.get(format!("https://{addr}{path}"));
    if let Caller::Token(token) = caller {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    Ok((response.status().as_u16(), response.text().await?))
}

/// As the apiserver calls kubelets.
const APISERVER: Caller<'static> = Caller::Certificate("apiserver-kubelet-client");

async fn get_json(addr: &str, path: &str) -> anyhow::Result<Value> {
    let (code, body) = get(addr, path, APISERVER).await?;
    anyhow::ensure!(code == 200, "GET {path}: {code} {body}");
    Ok(serde_json::from_str(&body)?)
}

fn names(list: &Value) -> Vec<String> {
    let mut names: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

fn kubelet_addr(args: &[String]) -> String {
    args[args.iter().position(|a| a == "--kubelet-listen").unwrap() + 1].clone()
}

async fn running(pods: &Api<Pod>, name: &str) -> anyhow::Result<bool> {
    Ok(pods
        .get_opt(name)
        .await?
        .and_then(|p| p.status?.phase)
        .as_deref()
        == Some("Running"))
}

/// Reasons of the Events about pod `name` in `namespace`.
async fn event_reasons(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Vec<String>> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    Ok(events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await?
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect())
}

fn token(account: &str, namespace: &str) -> anyhow::Result<String> {
    Ok(
        kubectl(&["create", "token", account, "-n", namespace, "--duration=1h"])?
            .trim()
            .to_owned(),
    )
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn kubelet_endpoints_list_pods_report_usage_and_check_callers() -> anyhow::Result<()> {
    let fixture = NodeFixture::new("e2e-kapi", "mock").await?;
    let (client, ns, node_name) = (&fixture.client, &fixture.ns, &fixture.node_name);
    let mut args = vk_node_args(node_name, "mock")?;
    args.extend(
        [
            "--mock-start-latency-ms",
            "200",
            "--usage-cache-seconds",
            "0",
        ]
        .map(String::from),
    );
    let addr = kubelet_addr(&args);
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &[])?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let mut busy = pod_on_node("busy", node_name, json!({}))?;
    busy.metadata.annotations = Some(
        [
            ("spillway.io/burst", "true"),
            ("spillway.io/mock-cpu-usage", "700m"),
            ("spillway.io/mock-memory-usage", "64Mi"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into(),
    );
    pods.create(&PostParams::default(), &busy).await?;
    pods.create(
        &PostParams::default(),
        &pod_on_node("quiet", node_name, json!({}))?,
    )
    .await?;
    wait_until(
        "busy and quiet Running",
        Duration::from_secs(60),
        || async { Ok(running(&pods, "busy").await? && running(&pods, "quiet").await?) },
    )
    .await?;
    let uid = |name: &str| {
        let pods = pods.clone();
        let name = name.to_owned();
        async move { anyhow::Ok(pods.get(&name).await?.metadata.uid.unwrap_or_default()) }
    };
    let (busy_uid, quiet_uid) = (uid("busy").await?, uid("quiet").await?);

    // /pods: the pods bound to the node, as it sees them.
    let list = get_json(&addr, "/pods").await?;
    assert_eq!(list["kind"], "PodList");
    assert_eq!(names(&list), ["busy", "quiet"]);
    let seen = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metadata"]["name"] == "busy")
        .unwrap();
    assert_eq!(seen["spec"]["nodeName"], node_name.as_str());
    assert_eq!(seen["status"]["phase"], "Running");

    // /runningpods/: what the provider runs.
    let running_list = get_json(&addr, "/runningpods/").await?;
    assert_eq!(running_list["kind"], "PodList");
    assert_eq!(names(&running_list), ["busy", "quiet"]);
    let first = running_list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metadata"]["name"] == "busy")
        .unwrap();
    assert_eq!(first["metadata"]["uid"], busy_uid.as_str());
    assert_eq!(first["metadata"]["namespace"], ns.name.as_str());
    assert_eq!(first["spec"]["containers"][0]["name"], "app");
    assert_eq!(first["spec"]["containers"][0]["image"], "nginx:1.27");

    // /stats/summary: only the pod with data, with the usage the provider reported.
    let summary = get_json(&addr, "/stats/summary").await?;
    assert_eq!(summary["node"]["nodeName"], node_name.as_str());
    let stats = summary["pods"].as_array().unwrap();
    assert_eq!(stats.len(), 1, "a pod without data is left out: {summary}");
    assert_eq!(stats[0]["podRef"]["uid"], busy_uid.as_str());
    assert_eq!(stats[0]["cpu"]["usageNanoCores"], 700_000_000u64);
    assert_eq!(stats[0]["memory"]["workingSetBytes"], 64u64 << 20);
    assert_eq!(stats[0]["containers"][0]["name"], "app");
    assert!(stats[0]["containers"][0]["startTime"].is_string());
    assert!(
        summary["node"]["cpu"]["usageCoreNanoSeconds"]
            .as_u64()
            .unwrap()
            > 0
    );

    // /metrics/resource: the kubelet's series and labels, with timestamps.
    let (code, text) = get(&addr, "/metrics/resource", APISERVER).await?;
    assert_eq!(code, 200, "{text}");
    let series = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let memory = series(&format!(
        "container_memory_working_set_bytes{{container=\"app\",namespace=\"{}\",pod=\"busy\"}}",
        ns.name
    ));
    assert_eq!(memory.get(1), Some(&"67108864"), "{text}");
    assert!(
        memory.get(2).is_some_and(|t| t.parse::<i64>().is_ok()),
        "timestamped: {text}"
    );
    for name in [
        "container_cpu_usage_seconds_total{",
        "container_start_time_seconds{",
        "pod_cpu_usage_seconds_total{",
        "pod_memory_working_set_bytes{",
        "node_cpu_usage_seconds_total ",
        "node_memory_working_set_bytes 67108864 ",
    ] {
        assert!(!series(name).is_empty(), "missing {name} in\n{text}");
    }
    assert!(
        !text.contains("pod=\"quiet\""),
        "no data must not read as zero:\n{text}"
    );

    // Callers: nobody, a bad token, a ServiceAccount with no rights, and metrics-server,
    // whose token may read metrics (nodes/metrics) but not pods (nodes/proxy).
    assert_eq!(get(&addr, "/pods", Caller::Anonymous).await?.0, 401);
    assert_eq!(
        get(&addr, "/stats/summary", Caller::Token("not-a-token"))
            .await?
            .0,
        401
    );
    kubectl(&["create", "serviceaccount", "nobody", "-n", &ns.name])?;
    let nobody = token("nobody", &ns.name)?;
    let (code, body) = get(&addr, "/metrics/resource", Caller::Token(&nobody)).await?;
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains(&format!("user=system:serviceaccount:{}:nobody", ns.name)),
        "{body}"
    );
    let metrics_server = token("metrics-server", "kube-system")?;
    let (code, body) = get(&addr, "/metrics/resource", Caller::Token(&metrics_server)).await?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("pod=\"busy\""));
    assert_eq!(
        get(&addr, "/pods", Caller::Token(&metrics_server)).await?.0,
        403
    );

    // kubectl top, through the metrics.k8s.io API that metrics-server serves from its
    // scrapes of the node (with its ServiceAccount token, as in a cluster).
    let top_pods = || kubectl(&["top", "pod", "-n", &ns.name, "--no-headers"]).unwrap_or_default();
    wait_until(
        "kubectl top lists busy",
        Duration::from_secs(90),
        || async { Ok(top_pods().contains("busy")) },
    )
    .await?;
    let top = top_pods();
    let row: Vec<&str> = top
        .lines()
        .find(|l| l.starts_with("busy"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row[1..], ["700m", "64Mi"], "kubectl top: {top}");
    assert!(
        !top.contains("quiet"),
        "a pod without data is not listed: {top}"
    );
    let node_top = kubectl(&["top", "node", node_name, "--no-headers"])?;
    assert!(node_top.contains("700m"), "kubectl top node: {node_top}");

    // Lifecycle Events from provider state.
    let reasons = event_reasons(client, &ns.name, "busy").await?;
    for reason in ["Pulling", "Created", "Started"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{reason} missing from {reasons:?}"
        );
    }

    // A graceful delete and a forced one: each pod drops out of /runningpods/ once the
    // provider stopped it.
    pods.delete("busy", &DeleteParams::default()).await?;
    kubectl(&[
        "delete",
        "pod",
        "quiet",
        "-n",
        &ns.name,
        "--grace-period=0",
        "--force",
        "--wait=false",
    ])?;
    wait_until(
        "both gone from /runningpods/",
        Duration::from_secs(30),
        || async {
            let list = get_json(&addr, "/runningpods/").await?;
            let uids: Vec<&str> = list["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| p["metadata"]["uid"].as_str())
                .collect();
            Ok(!uids.contains(&busy_uid.as_str()) && !uids.contains(&quiet_uid.as_str()))
        },
    )
    .await?;
    wait_until(
        "Killing recorded for busy",
        Duration::from_secs(20),
        || async {
            Ok(event_reasons(client, &ns.name, "busy")
                .await?
                .iter()
                .any(|r| r == "Killing"))
        },
    )
    .await?;
    assert_eq!(
        names(&get_json(&addr, "/pods").await?),
        Vec::<String>::new()
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn missing_configmaps_and_secrets_hold_required_and_report_optional() -> anyhow::Result<()> {
    let fixture = NodeFixture::new("e2e-refs", "mock").await?;
    let (client, ns, node_name) = (&fixture.client, &fixture.ns, &fixture.node_name);
    let mut args = vk_node_args(node_name, "mock")?;
    args.extend(["--mock-start-latency-ms", "100"].map(String::from));
    let addr = kubelet_addr(&args);
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &[])?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let needs = pod_on_node(
        "needs",
        node_name,
        json!({
            "containers": [{"name": "app", "image": "nginx:1.27", "env": [
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
                {"name": "CERT", "valueFrom": {"secretKeyRef": {"name": "certs", "key": "tls.crt"}}}
            ]}],
        }),
    )?;
    let tolerant = pod_on_node(
        "tolerant",
        node_name,
        json!({
            "containers": [{"name": "app", "image": "nginx:1.27",
                "envFrom": [{"configMapRef": {"name": "extras", "optional": true}}],
                "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "vault", "key": "token", "optional": true}}}]
            }],
        }),
    )?;
    pods.create(&PostParams::default(), &needs).await?;
    pods.create(&PostParams::default(), &tolerant).await?;

    wait_until("tolerant Running", Duration::from_secs(60), || {
        running(&pods, "tolerant")
    })
    .await?;
    let reasons = event_reasons(client, &ns.name, "tolerant").await?;
    for reason in ["OptionalConfigMapNotFound", "OptionalSecretNotFound"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{reason} missing from {reasons:?}"
        );
    }
    wait_until(
        "needs held back with both reasons",
        Duration::from_secs(30),
        || async {
            let reasons = event_reasons(client, &ns.name, "needs").await?;
            Ok(reasons.iter().any(|r| r == "MandatoryConfigMapNotFound")
                && reasons.iter().any(|r| r == "MandatorySecretNotFound"))
        },
    )
    .await?;
    assert_eq!(
        pods.get("needs")
            .await?
            .status
            .and_then(|s| s.phase)
            .as_deref(),
        Some("Pending")
    );
    let started = names(&get_json(&addr, "/runningpods/").await?);
    assert_eq!(
        started,
        ["tolerant"],
        "a held pod is never started at the provider"
    );

    // The ConfigMap appears without the key: the Event names the key now.
    kubectl(&[
        "create",
        "configmap",
        "settings",
        "-n",
        &ns.name,
        "--from-literal=other=1",
    ])?;
    wait_until(
        "the missing key is reported",
        Duration::from_secs(60),
        || async {
            Ok(event_reasons(client, &ns.name, "needs")
                .await?
                .iter()
                .any(|r| r == "MandatoryConfigMapKeyNotFound"))
        },
    )
    .await?;
    assert!(!running(&pods, "needs").await?);
    // Everything there: the pod starts.
    kubectl(&[
        "patch",
        "configmap",
        "settings",
        "-n",
        &ns.name,
        "--type=merge",
        "-p",
        r#"{"data":{"mode":"fast"}}"#,
    ])?;
    kubectl(&[
        "create",
        "secret",
        "generic",
        "certs",
        "-n",
        &ns.name,
        "--from-literal=tls.crt=x",
    ])?;
    wait_until(
        "needs Running once its objects exist",
        Duration::from_secs(60),
        || running(&pods, "needs"),
    )
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn a_deleted_node_is_registered_again_and_keeps_its_pods() -> anyhow::Result<()> {
    let fixture = NodeFixture::new("e2e-renode", "mock").await?;
    let (client, ns, node_name) = (&fixture.client, &fixture.ns, &fixture.node_name);
    let mut args = vk_node_args(node_name, "mock")?;
    args.extend(["--mock-start-latency-ms", "100"].map(String::from));
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &[])?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &pod_on_node("web", node_name, json!({}))?,
    )
    .await?;
    wait_until("web Running", Duration::from_secs(60), || {
        running(&pods, "web")
    })
    .await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let before = nodes.get(node_name).await?.metadata.uid;
    nodes.delete(node_name, &DeleteParams::default()).await?;
    // Within one status interval (60 s); the node looks every Lease renewal (10 s).
    // The Node is created, then its status written: the two land moments apart.
    wait_until(
        "the Node registered again, Ready",
        Duration::from_secs(60),
        || async {
            let Some(node) = nodes.get_opt(node_name).await? else {
                return Ok(false);
            };
            let ready = node
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            Ok(node.metadata.uid != before && ready)
        },
    )
    .await?;
    assert!(running(&pods, "web").await?, "its pod kept running");
    let logs = kubectl(&["logs", "-n", &ns.name, "web"])?;
    assert!(
        logs.contains("mock app line"),
        "the node still serves its pod: {logs}"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let registered = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={node_name}")))
        .await?
        .items
        .iter()
        .any(|e| {
            e.reason.as_deref() == Some("RegisteredNode") && e.type_.as_deref() == Some("Warning")
        });
    assert!(registered, "an Event says the Node was registered again");
    // The heartbeat Lease belongs to the new Node.
    let node_uid = nodes.get(node_name).await?.metadata.uid;
    wait_until(
        "the Lease names the new Node as owner",
        Duration::from_secs(30),
        || async {
            let lease: k8s_openapi::api::coordination::v1::Lease =
                Api::namespaced(client.clone(), "kube-node-lease")
                    .get(node_name)
                    .await?;
            Ok(lease
                .metadata
                .owner_references
                .unwrap_or_default()
                .iter()
                .any(|o| Some(&o.uid) == node_uid.as_ref()))
        },
    )
    .await?;
    Ok(())
}
