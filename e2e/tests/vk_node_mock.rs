//! `spillway vk-node --vk-provider mock` on the test bed: the node registers with the
//! virtual-node labels and taint and heartbeats its Lease; pods bound to it run, carry the
//! provider's IP, serve `kubectl logs` through the kubelet API, and go when deleted;
//! when containers exit, `restartPolicy` decides between a terminal phase and a relaunch.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use spillway_e2e::{
    NodeFixture, SpillwayProcess, kubectl, phase, pod_on_node, vk_node_args, wait_removed,
    wait_running, wait_until,
};

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn mock_node_runs_pods_serves_logs_and_removes_deleted_pods() -> anyhow::Result<()> {
    let fixture = NodeFixture::new("e2e-vk", "mock").await?;
    let (client, ns, node_name) = (&fixture.client, &fixture.ns, &fixture.node_name);
    let mut args = vk_node_args(node_name, "mock")?;
    args.extend([
        "--mock-start-latency-ms".into(),
        "200".into(),
        "--max-vcpu".into(),
        "32".into(),
        "--node-label".into(),
        "example.com/pool=burst".into(),
        "--node-taint".into(),
        "example.com/burst=only:NoSchedule".into(),
    ]);
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &[])?;

    let nodes: Api<Node> = Api::all(client.clone());
    wait_until(
        "the virtual node registered and Ready",
        Duration::from_secs(30),
        || async {
            let Some(node) = nodes.get_opt(node_name).await? else {
                return Ok(false);
            };
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            Ok(ready)
        },
    )
    .await?;
    let node = nodes.get(node_name).await?;
    let labels = node.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("type").map(String::as_str),
        Some("virtual-kubelet")
    );
    assert_eq!(
        labels.get("spillway.io/provider").map(String::as_str),
        Some("mock")
    );
    assert_eq!(
        labels.get("example.com/pool").map(String::as_str),
        Some("burst"),
        "the operator's --node-label"
    );
    let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
    assert!(
        taints
            .iter()
            .any(|t| t.key == "virtual-kubelet.io/provider" && t.effect == "NoSchedule")
    );
    assert!(
        taints.iter().any(|t| t.key == "example.com/burst"
            && t.value.as_deref() == Some("only")
            && t.effect == "NoSchedule"),
        "the operator's --node-taint: {taints:?}"
    );
    assert_eq!(
        node.status.and_then(|s| s.allocatable).unwrap()["cpu"].0,
        "32",
        "allocatable comes from the budget"
    );
    // The heartbeat writes the Lease once it has looked at the Node (a kubelet too
    // reports Ready before its first Lease): wait for it rather than race it.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    wait_until("the node's Lease", Duration::from_secs(20), || async {
        Ok(leases.get_opt(node_name).await?.is_some())
    })
    .await?;
    let lease = leases.get(node_name).await?;
    assert_eq!(lease.spec.and_then(|s| s.lease_duration_seconds), Some(40));

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &pod_on_node("web", node_name, json!({}))?,
    )
    .await?;
    wait_until(
        "web Running with a provider IP",
        Duration::from_secs(30),
        || async {
            let pod = pods.get("web").await?;
            let status = pod.status.unwrap_or_default();
            Ok(status.phase.as_deref() == Some("Running")
                && status
                    .pod_ip
                    .as_deref()
                    .is_some_and(|ip| ip.starts_with("10.253."))
                && status
                    .container_statuses
                    .unwrap_or_default()
                    .iter()
                    .all(|c| c.ready))
        },
    )
    .await?;

    let logs = kubectl(&["logs", "-n", &ns.name, "web", "-c", "app"])?;
    assert!(
        logs.contains("mock app line 0"),
        "kubectl logs through the kubelet API: {logs}"
    );
    let tail = kubectl(&["logs", "-n", &ns.name, "web", "--tail=1"])?;
    assert_eq!(tail.trim(), "mock app line 2");

    pods.delete("web", &DeleteParams::default()).await?;
    wait_removed(&pods, "web").await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn exited_containers_follow_restart_policy() -> anyhow::Result<()> {
    let fixture = NodeFixture::new("e2e-restart", "mock").await?;
    let (client, ns, node_name) = (&fixture.client, &fixture.ns, &fixture.node_name);
    let mut args = vk_node_args(node_name, "mock")?;
    // Every container exits with code 3 three seconds after it starts.
    args.extend(
        [
            "--mock-start-latency-ms",
            "100",
            "--mock-run-seconds",
            "3",
            "--mock-exit-code",
            "3",
        ]
        .map(String::from),
    );
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &[])?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &pod_on_node("once", node_name, json!({"restartPolicy": "Never"}))?,
    )
    .await?;
    pods.create(
        &PostParams::default(),
        &pod_on_node("always", node_name, json!({}))?,
    )
    .await?;
    wait_until(
        "Never pod Failed with exit code 3",
        Duration::from_secs(40),
        || async {
            let status = pods.get("once").await?.status.unwrap_or_default();
            let code = status
                .container_statuses
                .unwrap_or_default()
                .first()
                .and_then(|c| c.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code));
            Ok(status.phase.as_deref() == Some("Failed") && code == Some(3))
        },
    )
    .await?;
    // The kubelet-style back-off waits 10 s before the first relaunch.
    wait_until(
        "Always pod relaunched with its restart count raised",
        Duration::from_secs(60),
        || async {
            let status = pods.get("always").await?.status.unwrap_or_default();
            let container = status
                .container_statuses
                .unwrap_or_default()
                .into_iter()
                .next();
            let restarts = container.as_ref().map(|c| c.restart_count).unwrap_or(0);
            let running_again = container
                .and_then(|c| c.state)
                .is_some_and(|s| s.running.is_some());
            Ok(restarts >= 1 && running_again && status.phase.as_deref() == Some("Running"))
        },
    )
    .await?;
    // The wait before the relaunch was announced as a kubelet announces it.
    let events = kubectl(&[
        "get",
        "events",
        "-n",
        &ns.name,
        "--field-selector",
        "involvedObject.name=always,reason=BackOff",
        "-o",
        "jsonpath={.items[*].message}",
    ])?;
    assert!(
        events.contains("Back-off") && events.contains("restarting failed container"),
        "BackOff Event: {events:?}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn failing_provider_taints_the_node_and_keeps_pods_pending() -> anyhow::Result<()> {
    let fixture = NodeFixture::new("e2e-degraded", "mock").await?;
    let (client, ns, node_name) = (&fixture.client, &fixture.ns, &fixture.node_name);
    let mut args = vk_node_args(node_name, "mock")?;
    args.extend(["--mock-failure-rate", "1.0"].map(String::from));
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &[])?;
    let nodes: Api<Node> = Api::all(client.clone());
    wait_until("node registered", Duration::from_secs(30), || async {
        Ok(nodes.get_opt(node_name).await?.is_some())
    })
    .await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &pod_on_node("web", node_name, json!({}))?,
    )
    .await?;
    wait_until(
        "the provider-degraded taint",
        Duration::from_secs(60),
        || async {
            let taints = nodes
                .get(node_name)
                .await?
                .spec
                .and_then(|s| s.taints)
                .unwrap_or_default();
            Ok(taints
                .iter()
                .any(|t| t.key == "spillway.io/provider-degraded" && t.effect == "NoSchedule"))
        },
    )
    .await?;
    let node = nodes.get(node_name).await?;
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    assert!(
        ready,
        "a failing provider taints the node instead of making it NotReady"
    );
    let pod = pods.get("web").await?;
    assert_eq!(
        pod.status.and_then(|s| s.phase).as_deref(),
        Some("Pending"),
        "transient failures never fail the pod"
    );
    let events = kubectl(&[
        "get",
        "events",
        "-n",
        &ns.name,
        "-o",
        "jsonpath={.items[*].reason}",
    ])?;
    assert!(
        events.contains("ProviderCreateRetrying"),
        "an Event says why the pod waits: {events}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn two_controller_replicas_never_drive_one_node() -> anyhow::Result<()> {
    let fixture = NodeFixture::new("e2e-leader", "mock").await?;
    let (client, ns, node_name) = (&fixture.client, &fixture.ns, &fixture.node_name);
    let replica = |identity: &str| -> anyhow::Result<Vec<String>> {
        let mut args = vk_node_args(node_name, "mock")?;
        args[0] = "controller".into();
        args.extend(["--identity", identity, "--mock-start-latency-ms", "100"].map(String::from));
        Ok(args)
    };
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let lease_name = format!("spillway-vk-{node_name}");
    let holder = |leases: Api<Lease>, name: String| async move {
        Ok::<_, anyhow::Error>(
            leases
                .get_opt(&name)
                .await?
                .and_then(|l| l.spec?.holder_identity),
        )
    };
    let mut first =
        SpillwayProcess::start(&replica("replica-a")?, &format!("ctl-a-{}", ns.name), &[])?;
    wait_until("replica-a leads", Duration::from_secs(30), || async {
        Ok(holder(leases.clone(), lease_name.clone()).await?.as_deref() == Some("replica-a"))
    })
    .await?;
    let _second =
        SpillwayProcess::start(&replica("replica-b")?, &format!("ctl-b-{}", ns.name), &[])?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &pod_on_node("web", node_name, json!({}))?,
    )
    .await?;
    wait_running(&pods, "web", Duration::from_secs(30)).await?;
    assert_eq!(
        holder(leases.clone(), lease_name.clone()).await?.as_deref(),
        Some("replica-a"),
        "the standby waits"
    );

    first.kill()?;
    // The lease lasts 15 s; the standby retries every 5 s.
    wait_until("replica-b takes over", Duration::from_secs(40), || async {
        Ok(holder(leases.clone(), lease_name.clone()).await?.as_deref() == Some("replica-b"))
    })
    .await?;
    pods.create(
        &PostParams::default(),
        &pod_on_node("after", node_name, json!({}))?,
    )
    .await?;
    wait_until(
        "a pod bound after the takeover runs",
        Duration::from_secs(30),
        || async {
            Ok(pods
                .get("after")
                .await?
                .status
                .and_then(|s| s.phase)
                .as_deref()
                == Some("Running"))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn degraded_taint_goes_when_the_provider_recovers() -> anyhow::Result<()> {
    let fixture = NodeFixture::new("e2e-recover", "mock").await?;
    let (client, node_name) = (&fixture.client, &fixture.node_name);
    let mut args = vk_node_args(node_name, "mock")?;
    // An outage of 20 creates: five pods fail about four rounds of back-off, then run.
    args.extend(
        [
            "--mock-fail-first-creates",
            "20",
            "--mock-start-latency-ms",
            "100",
        ]
        .map(String::from),
    );
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", fixture.ns.name), &[])?;
    let nodes: Api<Node> = Api::all(client.clone());
    wait_until("node registered", Duration::from_secs(30), || async {
        Ok(nodes.get_opt(node_name).await?.is_some())
    })
    .await?;
    // Someone else's taint, which the degraded taint's add and remove must leave alone.
    kubectl(&[
        "taint",
        "node",
        node_name,
        "example.com/maintenance=soon:PreferNoSchedule",
    ])?;
    let pods = fixture.pods();
    for i in 0..5 {
        pods.create(
            &PostParams::default(),
            &pod_on_node(&format!("p{i}"), node_name, json!({}))?,
        )
        .await?;
    }
    let degraded = |nodes: Api<Node>| async move {
        let taints = nodes
            .get(node_name)
            .await?
            .spec
            .and_then(|s| s.taints)
            .unwrap_or_default();
        Ok::<_, anyhow::Error>(
            taints
                .iter()
                .any(|t| t.key == "spillway.io/provider-degraded"),
        )
    };
    wait_until(
        "the degraded taint during the outage",
        Duration::from_secs(30),
        || degraded(nodes.clone()),
    )
    .await?;
    wait_until(
        "all pods Running once the provider recovers",
        Duration::from_secs(90),
        || async {
            let list = pods.list(&Default::default()).await?;
            Ok(list.items.len() == 5
                && list
                    .items
                    .iter()
                    .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")))
        },
    )
    .await?;
    assert!(
        !degraded(nodes.clone()).await?,
        "the taint is removed after the provider recovered"
    );
    let taints: Vec<String> = nodes
        .get(node_name)
        .await?
        .spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .map(|t| format!("{}={}:{}", t.key, t.value.unwrap_or_default(), t.effect))
        .collect();
    assert!(
        taints.contains(&"example.com/maintenance=soon:PreferNoSchedule".to_owned())
            && taints.contains(&"virtual-kubelet.io/provider=mock:NoSchedule".to_owned()),
        "the other taints survive the degraded taint's add and remove: {taints:?}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn pods_bound_by_hand_that_break_the_rules_are_refused_by_the_node() -> anyhow::Result<()> {
    let fixture = NodeFixture::new("e2e-admit", "mock").await?;
    let (client, ns, node_name) = (&fixture.client, &fixture.ns, &fixture.node_name);
    let other = spillway_e2e::TestNamespace::create(client, "e2e-admit-other").await?;
    let mut args = vk_node_args(node_name, "mock")?;
    let admin_port: u16 = args[args.iter().position(|a| a == "--admin-addr").unwrap() + 1]
        .rsplit(':')
        .next()
        .unwrap()
        .parse()?;
    args.extend([
        "--mock-start-latency-ms".into(),
        "200".into(),
        "--allowed-namespaces".into(),
        ns.name.clone(),
    ]);
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &[])?;
    let nodes: Api<Node> = Api::all(client.clone());
    wait_until("node registered", Duration::from_secs(30), || async {
        Ok(nodes.get_opt(node_name).await?.is_some())
    })
    .await?;

    // Bound by hand (no scheduler, no webhook): each breaks one rule, one breaks none.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let mut untolerated = pod_on_node("untolerated", node_name, json!({}))?;
    untolerated.spec.as_mut().unwrap().tolerations = None;
    let refused = [
        (untolerated, "TaintNotTolerated"),
        (
            pod_on_node(
                "configmap-volume",
                node_name,
                json!({"volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}]}),
            )?,
            "Ineligible",
        ),
        (
            pod_on_node("host-network", node_name, json!({"hostNetwork": true}))?,
            "Ineligible",
        ),
    ];
    for (pod, _) in &refused {
        pods.create(&PostParams::default(), pod).await?;
    }
    pods.create(
        &PostParams::default(),
        &pod_on_node("good", node_name, json!({}))?,
    )
    .await?;
    let elsewhere: Api<Pod> = Api::namespaced(client.clone(), &other.name);
    elsewhere
        .create(
            &PostParams::default(),
            &pod_on_node("elsewhere", node_name, json!({}))?,
        )
        .await?;

    wait_running(&pods, "good", Duration::from_secs(30)).await?;
    let failed_with = |api: Api<Pod>, name: String, reason: &'static str| async move {
        wait_until(
            &format!("{name} Failed ({reason})"),
            Duration::from_secs(30),
            || async {
                let status = api.get(&name).await?.status.unwrap_or_default();
                Ok(status.phase.as_deref() == Some("Failed")
                    && status.reason.as_deref() == Some(reason))
            },
        )
        .await
    };
    for (pod, reason) in &refused {
        let name = pod.metadata.name.clone().unwrap();
        failed_with(pods.clone(), name, reason).await?;
    }
    failed_with(elsewhere.clone(), "elsewhere".into(), "NamespaceNotAllowed").await?;
    let message = pods
        .get("configmap-volume")
        .await?
        .status
        .and_then(|s| s.message)
        .unwrap_or_default();
    assert!(message.contains("unsupported-volume"), "{message}");

    // Events say why, and only the good pod ever reached the provider.
    let reasons = |namespace: &str| {
        kubectl(&[
            "get",
            "events",
            "-n",
            namespace,
            "-o",
            "jsonpath={.items[*].reason}",
        ])
    };
    let here = reasons(&ns.name)?;
    assert!(
        here.contains("TaintNotTolerated") && here.contains("Ineligible"),
        "{here}"
    );
    assert!(reasons(&other.name)?.contains("NamespaceNotAllowed"));
    let metrics = spillway_e2e::metrics_text(admin_port)?;
    let creates: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("spillway_provider_requests_total") && l.contains("op=\"create\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(creates, 1.0, "provider creates:\n{metrics}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn kubelet_api_callers_are_authorized_not_only_authenticated() -> anyhow::Result<()> {
    let fixture = NodeFixture::new("e2e-kubelet-authz", "mock").await?;
    let (ns, node_name) = (&fixture.ns, &fixture.node_name);
    let args = vk_node_args(node_name, "mock")?;
    let kubelet = args[args.iter().position(|a| a == "--kubelet-listen").unwrap() + 1].clone();
    let _node = fixture.start_with_running_pod(&args, "web").await?;
    // A certificate from the right CA, for a name RBAC grants nothing.
    let pki = spillway_e2e::run_dir().join("pki");
    let dir = tempfile::tempdir()?;
    let (key, csr, crt) = (
        dir.path().join("i.key"),
        dir.path().join("i.csr"),
        dir.path().join("i.crt"),
    );
    let ok = |status: std::process::ExitStatus| -> anyhow::Result<()> {
        anyhow::ensure!(status.success(), "openssl failed");
        Ok(())
    };
    ok(std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=intruder",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .stderr(std::process::Stdio::null())
        .status()?)?;
    // A v3 client certificate (webpki accepts no other kind).
    let ext = dir.path().join("client.ext");
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )?;
    ok(std::process::Command::new("openssl")
        .args(["x509", "-req", "-days", "1"])
        .arg("-extfile")
        .arg(&ext)
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(pki.join("ca.crt"))
        .arg("-CAkey")
        .arg(pki.join("ca.key"))
        .arg("-CAcreateserial")
        .arg("-CAserial")
        .arg(dir.path().join("ca.srl"))
        .arg("-out")
        .arg(&crt)
        .stderr(std::process::Stdio::null())
        .status()?)?;
    let url = format!("https://{kubelet}/containerLogs/{}/web/app", ns.name);
    let call =
        |cert: &std::path::Path, key: &std::path::Path| -> anyhow::Result<(String, String)> {
            let output = std::process::Command::new("curl")
                .args(["-sk", "-w", "\n%{http_code}", "--max-time", "10"])
                .arg("--cert")
                .arg(cert)
                .arg("--key")
                .arg(key)
                .arg(&url)
                .output()?;
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
            Ok((code.to_owned(), body.to_owned()))
        };
    let (code, body) = call(&crt, &key)?;
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("user=intruder"), "{body}");
    // The apiserver's kubelet client (system:masters) is let through.
    let (code, body) = call(
        &pki.join("apiserver-kubelet-client.crt"),
        &pki.join("apiserver-kubelet-client.key"),
    )?;
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("mock app line 0"), "{body}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn log_followers_beyond_the_cap_are_told_to_come_back() -> anyhow::Result<()> {
    let fixture = NodeFixture::new("e2e-followers", "mock").await?;
    let (client, ns, node_name) = (&fixture.client, &fixture.ns, &fixture.node_name);
    let args = vk_node_args(node_name, "mock")?;
    let kubelet = args[args.iter().position(|a| a == "--kubelet-listen").unwrap() + 1].clone();
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &[])?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &pod_on_node("web", node_name, json!({}))?,
    )
    .await?;
    wait_running(&pods, "web", Duration::from_secs(30)).await?;
    let pki = spillway_e2e::run_dir().join("pki");
    let url = format!(
        "https://{kubelet}/containerLogs/{}/web/app?follow=true",
        ns.name
    );
    let follow = |max_time: &str| {
        std::process::Command::new("curl")
            .args([
                "-sk",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                max_time,
            ])
            .arg("--cert")
            .arg(pki.join("apiserver-kubelet-client.crt"))
            .arg("--key")
            .arg(pki.join("apiserver-kubelet-client.key"))
            .arg(&url)
            .stdout(std::process::Stdio::piped())
            .spawn()
    };
    // The cap's worth of open streams …
    let mut open = Vec::new();
    for _ in 0..spillway_vk_node::kubelet_api::MAX_FOLLOWERS {
        open.push(follow("60")?);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // … and one more is refused.
    let extra = follow("10")?.wait_with_output()?;
    assert_eq!(String::from_utf8_lossy(&extra.stdout), "429");
    for mut child in open {
        let _ = child.kill();
        let _ = child.wait();
    }
    // Closed streams give their places back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = follow("3")?.wait_with_output()?;
    assert_eq!(String::from_utf8_lossy(&again.stdout), "200");
    Ok(())
}

/// How long the DaemonSet test watches for replacement pods: five minutes, long enough
/// for the DaemonSet controller's failed-pod back-off (1 s doubling) to have replaced a
/// failed pod eight times over.
const DAEMONSET_WATCH: Duration = Duration::from_secs(300);

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn a_daemonset_that_tolerates_everything_never_churns_on_the_virtual_node()
-> anyhow::Result<()> {
    use futures::StreamExt;
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::core::v1::Event;
    use kube::api::ListParams;
    use kube::runtime::watcher;

    let fixture = NodeFixture::new("e2e-ds", "mock").await?;
    let (client, ns, node_name) = (&fixture.client, &fixture.ns, &fixture.node_name);
    let mut args = vk_node_args(node_name, "mock")?;
    args.extend(["--mock-start-latency-ms".into(), "200".into()]);
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &[])?;
    let nodes: Api<Node> = Api::all(client.clone());
    wait_until("node registered", Duration::from_secs(30), || async {
        Ok(nodes.get_opt(node_name).await?.is_some())
    })
    .await?;

    // Every pod of the namespace ever created, from the watch (a pod failed and
    // replaced between two polls would be missed by a list).
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let watch = {
        let (pods, seen) = (pods.clone(), seen.clone());
        tokio::spawn(async move {
            let mut stream = watcher(pods, watcher::Config::default()).boxed();
            while let Some(event) = stream.next().await {
                if let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = event
                    && let Some(uid) = pod.metadata.uid
                {
                    seen.lock().unwrap().insert(uid);
                }
            }
        })
    };
    // Like node-exporter or a log agent: tolerates every taint; pinned to this node so
    // the test bed's other nodes are not involved.
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &ns.name);
    daemonsets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "agent"},
                "spec": {
                    "selector": {"matchLabels": {"app": "agent"}},
                    "template": {
                        "metadata": {"labels": {"app": "agent"}},
                        "spec": {
                            "tolerations": [{"operator": "Exists"}],
                            "nodeSelector": {"kubernetes.io/hostname": node_name},
                            "containers": [{"name": "agent", "image": "agent:1"}]
                        }
                    }
                }
            }))?,
        )
        .await?;
    wait_until(
        "the DaemonSet's pod parked with its reason",
        Duration::from_secs(60),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=agent"))
                .await?;
            Ok(list.items.iter().any(|p| {
                p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("DaemonSetNotSupported")
            }))
        },
    )
    .await?;
    tokio::time::sleep(DAEMONSET_WATCH).await;
    watch.abort();
    let created = seen.lock().unwrap().clone();
    assert_eq!(
        created.len(),
        1,
        "one pod object for the virtual node in {DAEMONSET_WATCH:?}, not a stream of replacements: {created:?}"
    );
    let uid = created.first().unwrap();
    let list = pods
        .list(&ListParams::default().labels("app=agent"))
        .await?;
    let pod = &list.items[0];
    assert_eq!(pod.metadata.uid.as_ref(), Some(uid), "the same pod stands");
    let status = pod.status.clone().unwrap_or_default();
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    assert!(
        status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("type NotIn [virtual-kubelet]")),
        "{status:?}"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let warnings = events
        .list(&ListParams::default().fields(&format!("involvedObject.uid={uid}")))
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("DaemonSetNotSupported"))
        .map(|e| e.count.unwrap_or(1).max(1))
        .sum::<i32>();
    assert_eq!(warnings, 1, "one Warning Event that says why");
    daemonsets.delete("agent", &DeleteParams::default()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed: run `make test`"]
async fn pods_bound_by_hand_beyond_the_nodes_allocatable_are_refused_out_of_cpu()
-> anyhow::Result<()> {
    let fixture = NodeFixture::new("e2e-room", "mock").await?;
    let (client, ns, node_name) = (&fixture.client, &fixture.ns, &fixture.node_name);
    // The node advertises the default 100 vCPU.
    let args = vk_node_args(node_name, "mock")?;
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &[])?;
    let nodes: Api<Node> = Api::all(client.clone());
    wait_until("node registered", Duration::from_secs(30), || async {
        Ok(nodes.get_opt(node_name).await?.is_some())
    })
    .await?;
    let sixteen = |name: String| {
        pod_on_node(
            &name,
            node_name,
            json!({"containers": [{"name": "app", "image": "nginx:1.27",
                "resources": {"requests": {"cpu": "16", "memory": "32Gi"}}}]}),
        )
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    for i in 0..10 {
        pods.create(&PostParams::default(), &sixteen(format!("big-{i}"))?)
            .await?;
    }
    // Six fit in 100 vCPU; the other four fail as a kubelet fails them.
    let phases = || async {
        let list = pods.list(&Default::default()).await?;
        let of = |phase: &str| {
            list.items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase))
                .count()
        };
        let out_of_cpu: Vec<String> = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("OutOfcpu"))
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        anyhow::Ok((of("Running"), of("Failed"), out_of_cpu))
    };
    wait_until(
        "six Running, four Failed",
        Duration::from_secs(60),
        || async {
            let (running, failed, _) = phases().await?;
            Ok(running == 6 && failed == 4)
        },
    )
    .await?;
    let (_, _, out_of_cpu) = phases().await?;
    assert_eq!(out_of_cpu.len(), 4, "{out_of_cpu:?}");
    let refused = pods.get(&out_of_cpu[0]).await?;
    let message = refused.status.and_then(|s| s.message).unwrap_or_default();
    assert!(
        message.contains(
            "Node didn't have enough resource: cpu, requested: 16000, used: 96000, capacity: 100000"
        ),
        "{message}"
    );
    // A running pod gone gives its room back: the next one fits.
    let running = pods
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .and_then(|p| p.metadata.name)
        .unwrap_or_default();
    pods.delete(&running, &DeleteParams::default()).await?;
    wait_until("the deleted pod gone", Duration::from_secs(60), || async {
        Ok(pods.get_opt(&running).await?.is_none())
    })
    .await?;
    pods.create(&PostParams::default(), &sixteen("after".into())?)
        .await?;
    wait_running(&pods, "after", Duration::from_secs(30)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed: run `make test`"]
async fn pods_bound_by_hand_run_only_when_opted_in_and_within_the_budget() -> anyhow::Result<()> {
    let fixture = NodeFixture::new("e2e-opt-in", "mock").await?;
    let (client, ns, node_name) = (&fixture.client, &fixture.ns, &fixture.node_name);
    // A cluster budget of 0 holds no pod, whatever other tests run meanwhile.
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "budget:\n  maxUsdPerHour: 0\n")?;
    let mut args = vk_node_args(node_name, "mock")?;
    args.extend(["--config".into(), config.display().to_string()]);
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &[])?;
    let nodes: Api<Node> = Api::all(client.clone());
    wait_until("node registered", Duration::from_secs(30), || async {
        Ok(nodes.get_opt(node_name).await?.is_some())
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let status_of = |name: &'static str| {
        let pods = pods.clone();
        async move {
            let status = pods.get(name).await?.status.unwrap_or_default();
            anyhow::Ok((
                status.phase.unwrap_or_default(),
                status.reason.unwrap_or_default(),
                status.message.unwrap_or_default(),
            ))
        }
    };
    let refused = |name: &'static str| async move {
        wait_until(
            &format!("{name} refused"),
            Duration::from_secs(30),
            || async { Ok(status_of(name).await?.0 == "Failed") },
        )
        .await?;
        let (_, reason, message) = status_of(name).await?;
        anyhow::Ok((reason, message))
    };
    // A bare pod that does not opt itself in is refused, never started.
    let mut quiet = pod_on_node("quiet", node_name, json!({}))?;
    quiet.metadata.annotations = None;
    pods.create(&PostParams::default(), &quiet).await?;
    let (reason, message) = refused("quiet").await?;
    assert_eq!(reason, "NotOptedIn", "{message}");
    assert!(message.contains("pod quiet is not opted in"), "{message}");
    // An opted-in one would break the cluster budget.
    pods.create(
        &PostParams::default(),
        &pod_on_node("over", node_name, json!({}))?,
    )
    .await?;
    let (reason, message) = refused("over").await?;
    assert_eq!(reason, "OverBudget", "{message}");
    assert!(message.contains("cluster burst budget"), "{message}");
    // The budget raised live, a workload's own budget still holds: one pod of 250m and
    // 512Mi (about 0.0123 USD/h at Fargate's list prices) fits in 0.02 USD/h, two do not.
    std::fs::write(&config, "budget:\n  maxUsdPerHour: 1000\n")?;
    let admin_port: u16 = args[args.iter().position(|a| a == "--admin-addr").unwrap() + 1]
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .parse()?;
    wait_until("the config reloaded", Duration::from_secs(30), || async {
        let metrics = spillway_e2e::metrics_text(admin_port)?;
        Ok(spillway_e2e::sample(&metrics, "spillway_config_generation") == Some(2.0))
    })
    .await?;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &ns.name);
    let template = pod_on_node("unused", node_name, json!({}))?;
    let capped = serde_json::from_value(json!({
        "metadata": {"name": "capped"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "capped"}},
            "template": {"metadata": {"labels": {"app": "capped"},
                "annotations": {"spillway.io/burst": "true", "spillway.io/max-usd-per-hour": "0.02"}},
                "spec": template.spec.clone()}}
    }))?;
    let refused_in = |app: &'static str, reason: &'static str| {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&kube::api::ListParams::default().labels(&format!("app={app}")))
                .await?;
            let running = list
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count();
            let message = list.items.iter().find_map(|p| {
                let status = p.status.as_ref()?;
                (status.reason.as_deref() == Some(reason)).then(|| status.message.clone())?
            });
            anyhow::Ok((running, message))
        }
    };
    deployments.create(&PostParams::default(), &capped).await?;
    wait_until(
        "one capped pod Running, one refused",
        Duration::from_secs(60),
        || async {
            let (running, message) = refused_in("capped", "OverBudget").await?;
            Ok(running == 1 && message.is_some())
        },
    )
    .await?;
    let (_, message) = refused_in("capped", "OverBudget").await?;
    let message = message.unwrap_or_default();
    assert!(
        message.contains(&format!("workload {}/capped burst budget", ns.name)),
        "{message}"
    );
    deployments
        .delete("capped", &DeleteParams::default())
        .await?;
    // A Deployment that opted out, whose template binds its pods to the node by hand
    // and tolerates its taint: its pods are refused too.
    let deployment = serde_json::from_value(json!({
        "metadata": {"name": "sneaky"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "sneaky"}},
            "template": {"metadata": {"labels": {"app": "sneaky"},
                "annotations": {"spillway.io/burst": "false"}},
                "spec": template.spec}}
    }))?;
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    wait_until(
        "the Deployment's pod refused",
        Duration::from_secs(60),
        || async { Ok(refused_in("sneaky", "NotOptedIn").await?.1.is_some()) },
    )
    .await?;
    let (running, message) = refused_in("sneaky", "NotOptedIn").await?;
    assert_eq!(running, 0);
    let message = message.unwrap_or_default();
    assert!(
        message.contains(&format!("Deployment {}/sneaky is not opted in", ns.name)),
        "{message}"
    );
    deployments
        .delete("sneaky", &DeleteParams::default())
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed: run `make test`"]
async fn a_native_sidecar_runs_beside_the_app_and_does_not_block_a_job_like_pod()
-> anyhow::Result<()> {
    let fixture = NodeFixture::new("e2e-sidecar", "mock").await?;
    let (client, ns, node_name) = (&fixture.client, &fixture.ns, &fixture.node_name);
    // The app exits 0 after 8 s; the sidecar would run for ever.
    let mut args = vk_node_args(node_name, "mock")?;
    args.extend(["--mock-run-seconds", "8", "--mock-start-latency-ms", "100"].map(String::from));
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &[])?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &pod_on_node(
            "job",
            node_name,
            json!({"restartPolicy": "Never",
                "initContainers": [{"name": "proxy", "image": "envoyproxy/envoy:v1.31",
                    "restartPolicy": "Always"}],
                "containers": [{"name": "app", "image": "busybox"}]}),
        )?,
    )
    .await?;
    // While the app runs, the sidecar runs beside it, reported among the init containers.
    wait_running(&pods, "job", Duration::from_secs(30)).await?;
    let sidecar_running = || async {
        let pod = pods.get("job").await?;
        let status = pod.status.unwrap_or_default();
        let sidecar = status
            .init_container_statuses
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.name == "proxy");
        anyhow::Ok(sidecar.is_some_and(|c| c.ready && c.state.and_then(|s| s.running).is_some()))
    };
    wait_until(
        "the sidecar running beside the app",
        Duration::from_secs(30),
        sidecar_running,
    )
    .await?;
    // The app exits: the pod succeeds although its sidecar would run on.
    wait_until("the pod Succeeded", Duration::from_secs(60), || async {
        Ok(phase(&pods, "job").await?.as_deref() == Some("Succeeded"))
    })
    .await?;
    let app = pods
        .get("job")
        .await?
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.state)
        .and_then(|s| s.terminated)
        .map(|t| t.exit_code);
    assert_eq!(app, Some(0), "the app's own exit decides");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed: run `make test`"]
async fn readiness_keeps_a_pod_out_of_its_service_until_it_passes_and_liveness_restarts_it()
-> anyhow::Result<()> {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let fixture = NodeFixture::new("e2e-probes", "mock").await?;
    let (client, ns, node_name) = (&fixture.client, &fixture.ns, &fixture.node_name);
    let target = spillway_e2e::probe_target::ProbeTarget::start().await?;
    let mut args = vk_node_args(node_name, "mock")?;
    args.push("--mock-probe-loopback".into());
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &[])?;
    let port = target.port;
    let pod = pod_on_node(
        "probed",
        node_name,
        json!({"containers": [{"name": "app", "image": "nginx:1.27",
            "ports": [{"name": "http", "containerPort": port}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1},
            "livenessProbe": {"httpGet": {"path": "/live", "port": port}, "periodSeconds": 1,
                "failureThreshold": 2}}]}),
    )?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod).await?;
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), &ns.name);
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "probed"},
                "spec": {"selector": {"app": "probed"}, "ports": [{"port": 80, "targetPort": port}]}
            }))?,
        )
        .await?;
    wait_running(&pods, "probed", Duration::from_secs(30)).await?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns.name);
    // The service's endpoint for the pod: Some(ready) once the slice lists it.
    let endpoint_ready = || async {
        let list = slices
            .list(&kube::api::ListParams::default().labels("kubernetes.io/service-name=probed"))
            .await?;
        anyhow::Ok(
            list.items
                .iter()
                .flat_map(|s| s.endpoints.iter().flatten())
                .find_map(|e| e.conditions.as_ref().and_then(|c| c.ready)),
        )
    };
    // Running but failing its readiness probe: listed, not ready, for as long as it fails.
    wait_until(
        "the endpoint listed, not ready",
        Duration::from_secs(60),
        || async { Ok(endpoint_ready().await? == Some(false)) },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(endpoint_ready().await?, Some(false), "still failing");
    let events = || async {
        let list =
            kube::Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &ns.name)
                .list(&Default::default())
                .await?;
        anyhow::Ok(
            list.items
                .into_iter()
                .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
                .collect::<Vec<_>>(),
        )
    };
    wait_until("an Unhealthy Event", Duration::from_secs(30), || async {
        Ok(events().await?.iter().any(|(reason, message)| {
            reason == "Unhealthy"
                && message == "Readiness probe failed: HTTP probe failed with statuscode: 500"
        }))
    })
    .await?;
    // It passes: the endpoint turns ready.
    target.set_ready(200);
    wait_until("the endpoint ready", Duration::from_secs(30), || async {
        Ok(endpoint_ready().await? == Some(true))
    })
    .await?;
    // Its liveness probe fails twice: killed, restarted, counted.
    target.set_live(503);
    let restarts = || async {
        let pod = pods.get("probed").await?;
        anyhow::Ok(
            pod.status
                .and_then(|s| s.container_statuses)
                .and_then(|c| c.first().map(|c| c.restart_count))
                .unwrap_or(0),
        )
    };
    wait_until("restartCount raised", Duration::from_secs(60), || async {
        Ok(restarts().await? >= 1)
    })
    .await?;
    target.set_live(200);
    assert!(
        events()
            .await?
            .iter()
            .any(|(reason, message)| reason == "Killing"
                && message == "Container app failed liveness probe, will be restarted"),
        "a Killing Event"
    );
    // Relaunched after the back-off, it runs and turns ready again.
    wait_until(
        "ready again after the restart",
        Duration::from_secs(90),
        || async { Ok(endpoint_ready().await? == Some(true) && restarts().await? >= 1) },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed: run `make test`"]
async fn an_embedded_node_that_fails_to_start_is_logged_retried_and_shown_down()
-> anyhow::Result<()> {
    let fixture = NodeFixture::new("e2e-node-up", "mock").await?;
    let (ns, node_name) = (&fixture.ns, &fixture.node_name);
    let admin_port = |args: &[String]| -> anyhow::Result<u16> {
        let at = args.iter().position(|a| a == "--admin-addr").unwrap_or(0);
        Ok(args[at + 1]
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .parse()?)
    };
    // A controller whose one embedded Fargate node cannot start (no subnets): the
    // controller stays up, says why at once, tries again with back-off, and the node's
    // gauge says 0.
    let broken_name = format!("{node_name}-broken");
    let mut broken = vk_node_args(&broken_name, "fargate")?;
    broken[0] = "controller".into();
    let broken_admin = admin_port(&broken)?;
    let log = format!("ctl-broken-{}", ns.name);
    let mut broken_process = SpillwayProcess::start(&broken, &log, &[])?;
    wait_until(
        "two failed starts in the log",
        Duration::from_secs(30),
        || async {
            let text = std::fs::read_to_string(spillway_e2e::log_path(&log)).unwrap_or_default();
            Ok(text.matches("virtual node failed").count() >= 2)
        },
    )
    .await?;
    let text = std::fs::read_to_string(spillway_e2e::log_path(&log))?;
    assert!(
        text.contains("--subnets"),
        "the log says what is wrong: {text}"
    );
    assert!(
        broken_process.child.try_wait()?.is_none(),
        "the controller keeps running"
    );
    let metrics = spillway_e2e::metrics_text(broken_admin)?;
    assert!(
        metrics.contains(&format!(
            "spillway_virtual_node_up{{node=\"{broken_name}\",provider=\"fargate\"}} 0"
        )),
        "{metrics}"
    );

    // A node that runs says 1.
    let mut working = vk_node_args(node_name, "mock")?;
    working[0] = "controller".into();
    let working_admin = admin_port(&working)?;
    let _working = SpillwayProcess::start(&working, &format!("ctl-up-{}", ns.name), &[])?;
    let up = format!("spillway_virtual_node_up{{node=\"{node_name}\",provider=\"mock\"}} 1");
    wait_until("the mock node up", Duration::from_secs(30), || async {
        Ok(spillway_e2e::metrics_text(working_admin)
            .unwrap_or_default()
            .contains(&up))
    })
    .await?;
    Ok(())
}
