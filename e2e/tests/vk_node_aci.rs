//! `spillway vk-node --vk-provider aci` against the fake ARM server (`spillway_e2e::fake_arm`,
//! which refuses any PUT body the official ACI spec refuses): pods run as container
//! groups and get the group's IP, Secret-derived env reaches ACI only as `secureValue`,
//! `kubectl logs` reads the ACI logs API, deleting a pod deletes its group, a burst of
//! `429`s is waited out without failing a pod, and a node killed while creating leaves,
//! after a restart, exactly one group per pod and none for pods that went away.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use spillway_e2e::fake_arm::{Behaviour, FakeArm, PutFault};
use spillway_e2e::{
    LogFollower, NodeFixture, SpillwayProcess, kubectl, kubelet_get, kubelet_listen_addr,
    pod_on_node, vk_node_args, wait_until,
};

const TOKEN: &str = "e2e-arm-token";

/// A namespace, a fake ARM server, a token file and the flags of an ACI node for them.
struct AciFixture {
    node: NodeFixture,
    arm: FakeArm,
    args: Vec<String>,
    _token_dir: tempfile::TempDir,
}

impl AciFixture {
    async fn new(prefix: &str) -> anyhow::Result<Self> {
        let node = NodeFixture::new(prefix, "aci").await?;
        let arm = FakeArm::start(TOKEN, Behaviour::default()).await?;
        let token_dir = tempfile::tempdir()?;
        let token_file = token_dir.path().join("token");
        std::fs::write(&token_file, TOKEN)?;
        let mut args = vk_node_args(&node.node_name, "aci")?;
        args.extend([
            "--aci-subscription-id".into(),
            "00000000-0000-0000-0000-0000000000e2".into(),
            "--aci-resource-group".into(),
            "spillway-e2e".into(),
            "--arm-endpoint".into(),
            arm.url.clone(),
            "--azure-token-file".into(),
            token_file.display().to_string(),
            "--cluster-id".into(),
            node.ns.name.clone(),
            "--aci-subnet-ids".into(),
            "/subscriptions/00000000-0000-0000-0000-0000000000e2/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/cluster/subnets/aci".into(),
        ]);
        Ok(Self {
            node,
            arm,
            args,
            _token_dir: token_dir,
        })
    }

    fn start_node(&self) -> anyhow::Result<SpillwayProcess> {
        SpillwayProcess::start(&self.args, &format!("vk-{}", self.node.ns.name), &[])
    }

    /// The stored groups of this test's pods, by the pod UID in their tags.
    fn groups_by_pod(&self) -> BTreeMap<String, Vec<Value>> {
        let mut by_pod: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for (_, group) in self.arm.groups() {
            if group["tags"]["spillway.io-cluster"] == json!(self.node.ns.name)
                && let Some(uid) = group["tags"]["spillway.io-pod-uid"].as_str()
            {
                by_pod.entry(uid.to_owned()).or_default().push(group);
            }
        }
        by_pod
    }
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

async fn wait_running(pods: &Api<Pod>, count: usize, within: Duration) -> anyhow::Result<()> {
    wait_until(&format!("{count} pods Running"), within, || async {
        let list = pods.list(&ListParams::default()).await?;
        let failed: Vec<_> = list
            .items
            .iter()
            .filter(|p| phase(p) == Some("Failed"))
            .map(|p| p.metadata.name.clone())
            .collect();
        anyhow::ensure!(failed.is_empty(), "pods failed: {failed:?}");
        Ok(list.items.len() == count && list.items.iter().all(|p| phase(p) == Some("Running")))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed: run `make test`"]
async fn aci_pods_run_with_secure_env_ips_and_logs_and_are_deleted() -> anyhow::Result<()> {
    let fx = AciFixture::new("e2e-aci").await?;
    let (client, ns) = (&fx.node.client, &fx.node.ns);
    let _node = fx.start_node()?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "db"},
                "stringData": {"password": "hunter2-e2e"}
            }))?,
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    // A declared port: ACI gives a group an address only for the ports it names.
    let spec = json!({"containers": [{"name": "app", "image": "nginx:1.27",
    "ports": [{"containerPort": 80}],
    "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}},
    "env": [
        {"name": "MODE", "value": "burst"},
        {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}
    ]}]});
    pods.create(
        &PostParams::default(),
        &pod_on_node("web", &fx.node.node_name, spec)?,
    )
    .await?;
    wait_running(&pods, 1, Duration::from_secs(60)).await?;

    let pod = pods.get("web").await?;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default();
    assert!(
        ip.starts_with("10.240."),
        "the group's IP, got {ip:?}; groups: {:?}",
        fx.arm.groups()
    );
    assert!(fx.arm.refused().is_empty(), "{:?}", fx.arm.refused());
    let groups = fx.groups_by_pod();
    assert_eq!(groups[&uid].len(), 1);
    let env = &groups[&uid][0]["properties"]["containers"][0]["properties"]["environmentVariables"];
    let var = |name: &str| {
        env.as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(var("MODE"), json!({"name": "MODE", "value": "burst"}));
    assert_eq!(
        var("DB_PASSWORD"),
        json!({"name": "DB_PASSWORD", "secureValue": "hunter2-e2e"}),
        "a Secret's value goes only as secureValue"
    );

    // kubectl logs -f through the kubelet API and the ACI logs API: the container writes
    // a line a second, so the stream opens before all five exist and must deliver the
    // rest as they come, each once and in order.
    let followed = LogFollower::start(&ns.name, "web", 5)?
        .lines(Duration::from_secs(30))
        .await?;
    assert_eq!(
        followed,
        [
            "app line 1",
            "app line 2",
            "app line 3",
            "app line 4",
            "app line 5"
        ]
    );
    let logs = kubectl(&["logs", "-n", &ns.name, "web"])?;
    assert_eq!(
        logs,
        "app line 1\napp line 2\napp line 3\napp line 4\napp line 5\n"
    );
    let tail = kubectl(&["logs", "-n", &ns.name, "web", "--tail=2"])?;
    assert_eq!(tail, "app line 4\napp line 5\n");
    let stamped = kubectl(&["logs", "-n", &ns.name, "web", "--timestamps", "--tail=1"])?;
    assert!(
        stamped.starts_with("20") && stamped.ends_with("Z app line 5\n"),
        "{stamped}"
    );

    // A container name that walks up the ARM path, sent straight to the kubelet API with a
    // credential it accepts: 404, and ARM sees no request outside the container's logs.
    let addr = kubelet_listen_addr(&fx.args)?;
    for container in [
        "..%2F..%2F..%2F..%2Fproviders%2FMicrosoft.Authorization",
        "app%2F..%2F..%2F..%2F..",
        "sidecar",
    ] {
        let (code, body) = kubelet_get(
            &addr,
            &format!("/containerLogs/{}/web/{container}", ns.name),
        )
        .await?;
        assert_eq!(code, 404, "{container}: {body}");
    }
    let (code, body) = kubelet_get(&addr, &format!("/containerLogs/{}/web/app", ns.name)).await?;
    assert_eq!((code, body.lines().count()), (200, 5), "{body}");
    let stray: Vec<String> = fx
        .arm
        .requests()
        .into_iter()
        .filter(|request| {
            let path = request.split_once(' ').map_or("", |(_, path)| path);
            let in_groups = path.contains("/providers/Microsoft.ContainerInstance/containerGroups");
            let container_ok =
                !path.contains("/containers/") || path.ends_with("/containers/app/logs");
            !(path.starts_with("/fake/") || (in_groups && container_ok))
        })
        .collect();
    assert!(
        stray.is_empty(),
        "ARM was asked for something besides groups and the app container's logs: {stray:?}"
    );

    // Deleting the pod deletes its group, then the Pod goes.
    pods.delete("web", &DeleteParams::default()).await?;
    wait_until("group and pod gone", Duration::from_secs(60), || async {
        Ok(fx.groups_by_pod().is_empty() && pods.get_opt("web").await?.is_none())
    })
    .await?;
    assert!(fx.arm.counts().deletes >= 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed: run `make test`"]
async fn aci_node_waits_out_429s_and_a_crash_without_duplicate_or_orphan_groups()
-> anyhow::Result<()> {
    let fx = AciFixture::new("e2e-aci-crash").await?;
    let (client, ns) = (&fx.node.client, &fx.node.ns);
    // Another cluster's group in the same resource group: never this node's to touch.
    fx.arm.insert_group(
        "other-cluster-web",
        json!({"location": "westeurope", "tags": {"spillway.io-cluster": "someone-else",
            "spillway.io-node": fx.node.node_name, "spillway.io-pod-uid": "not-ours"},
            "properties": {"osType": "Linux", "containers": [{"name": "app",
                "properties": {"image": "nginx", "resources": {"requests": {"cpu": 1, "memoryInGB": 1}}}}]}}),
    );
    // ARM throttles the first 30 calls: the node waits (Retry-After) instead of failing pods.
    fx.arm.throttle_next(30);
    let mut node = fx.start_node()?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    for i in 0..12 {
        pods.create(
            &PostParams::default(),
            &pod_on_node(&format!("p{i}"), &fx.node.node_name, json!({}))?,
        )
        .await?;
    }
    wait_until(
        "the node part-way through creating groups",
        Duration::from_secs(90),
        || async { Ok(fx.groups_by_pod().len() >= 3) },
    )
    .await?;
    node.kill()?;
    assert!(
        fx.arm.counts().throttled >= 30,
        "the 429 burst was served: {:?}",
        fx.arm.counts()
    );

    // While the node is down two pods go away for good; their groups (if made) are orphans.
    let force = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    let mut removed = Vec::new();
    for name in ["p0", "p1"] {
        removed.push(pods.get(name).await?.metadata.uid.unwrap_or_default());
        pods.delete(name, &force).await?;
    }

    let _node = fx.start_node()?;
    wait_running(&pods, 10, Duration::from_secs(120)).await?;
    let live: Vec<String> = pods
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.uid)
        .collect();
    wait_until(
        "exactly one group per live pod, none for removed ones",
        Duration::from_secs(30),
        || async {
            let groups = fx.groups_by_pod();
            Ok(live
                .iter()
                .all(|uid| groups.get(uid).map(Vec::len) == Some(1))
                && removed.iter().all(|uid| !groups.contains_key(uid))
                && groups.len() == live.len())
        },
    )
    .await?;
    assert!(
        fx.arm.groups().contains_key("other-cluster-web"),
        "another cluster's group is left alone"
    );
    assert!(fx.arm.refused().is_empty(), "{:?}", fx.arm.refused());
    assert_eq!(fx.arm.counts().unauthorized, 0);
    Ok(())
}

/// The messages of the Events about pod `name`.
async fn event_messages(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), namespace);
    Ok(events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await?
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed: run `make test`"]
async fn creates_beyond_the_quota_wait_pending_with_an_event() -> anyhow::Result<()> {
    let mut fx = AciFixture::new("e2e-aci-quota").await?;
    // One create per 60 s: the first pod's group is made at once, the next slot is far
    // beyond the 10 s a create waits in line.
    fx.args.extend(
        [
            "--aci-create-quota",
            "1",
            "--aci-create-quota-seconds",
            "60",
        ]
        .map(String::from),
    );
    let _node = fx.start_node()?;
    let pods: Api<Pod> = Api::namespaced(fx.node.client.clone(), &fx.node.ns.name);
    for name in ["first", "queued"] {
        pods.create(
            &PostParams::default(),
            &pod_on_node(name, &fx.node.node_name, json!({}))?,
        )
        .await?;
        // In this order: the first takes the slot.
        wait_until(
            "the pod seen by the node",
            Duration::from_secs(30),
            || async { Ok(!fx.groups_by_pod().is_empty()) },
        )
        .await?;
    }
    wait_until(
        "a ProviderThrottled Event naming the quota",
        Duration::from_secs(60),
        || async {
            Ok(event_messages(&fx.node.client, &fx.node.ns.name, "queued")
                .await?
                .iter()
                .any(|(reason, message)| {
                    reason == "ProviderThrottled"
                        && message.contains("ACI create quota (1 per 60s)")
                }))
        },
    )
    .await?;
    let queued = pods.get("queued").await?;
    assert_eq!(phase(&queued), Some("Pending"), "waiting, not failed");
    assert_eq!(fx.groups_by_pod().len(), 1, "no group beyond the quota");
    assert_eq!(fx.arm.counts().puts, 1);
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn acis_quota_and_unavailable_answers_mark_the_pod_refused_not_failed() -> anyhow::Result<()>
{
    let fx = AciFixture::new("e2e-aci-full").await?;
    let _node = fx.start_node()?;
    let pods: Api<Pod> = Api::namespaced(fx.node.client.clone(), &fx.node.ns.name);
    for (name, fault, condition_says) in [
        ("over-quota", PutFault::Quota, "ContainerGroupQuotaReached"),
        (
            "no-capacity",
            PutFault::ServiceUnavailable,
            "ServiceUnavailable",
        ),
    ] {
        fx.arm.fail_next_puts(100_000, fault);
        pods.create(
            &PostParams::default(),
            &pod_on_node(name, &fx.node.node_name, json!({}))?,
        )
        .await?;
        wait_until(
            &format!("{name}: ProviderRefused (Unavailable) while Pending"),
            Duration::from_secs(90),
            || async {
                let status = pods.get(name).await?.status.unwrap_or_default();
                anyhow::ensure!(
                    status.phase.as_deref() == Some("Pending"),
                    "a refusal for want of room must not fail or start the pod: {status:?}"
                );
                Ok(status.conditions.unwrap_or_default().iter().any(|c| {
                    c.type_ == "spillway.io/ProviderRefused"
                        && c.status == "True"
                        && c.reason.as_deref() == Some("Unavailable")
                        && c.message
                            .as_deref()
                            .is_some_and(|m| m.contains(condition_says))
                }))
            },
        )
        .await?;
        // Room again: it runs, as one group.
        fx.arm.clear_put_faults();
        wait_until(
            &format!("{name} Running"),
            Duration::from_secs(120),
            || async { Ok(phase(&pods.get(name).await?) == Some("Running")) },
        )
        .await?;
    }
    let groups = fx.groups_by_pod();
    assert_eq!(groups.len(), 2);
    assert!(groups.values().all(|g| g.len() == 1), "one group per pod");
    Ok(())
}

/// An ACI node without credentials says so in one line at start and stays tainted
/// provider-degraded (no endless 403s on pod creates); with a token ARM refuses it names
/// the refusal; once the token is right the next check finds it ready and the taint goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed: run `make test`"]
async fn an_aci_node_without_credentials_says_so_once_and_stays_tainted_until_they_work()
-> anyhow::Result<()> {
    let fx = AciFixture::new("e2e-aci-setup").await?;
    let token_file = fx.args[fx
        .args
        .iter()
        .position(|a| a == "--azure-token-file")
        .unwrap()
        + 1]
    .clone();
    std::fs::remove_file(&token_file)?;
    let admin_port = spillway_e2e::admin_port(&fx.args)?;
    let log = format!("vk-{}", fx.node.ns.name);
    let _node = fx.start_node()?;
    let ready = || spillway_e2e::provider_ready(admin_port, &fx.node.node_name, "aci");
    spillway_e2e::wait_provider_ready(
        admin_port,
        &fx.node.node_name,
        "aci",
        false,
        Duration::from_secs(60),
    )
    .await?;
    let text = std::fs::read_to_string(spillway_e2e::log_path(&log))?;
    assert_eq!(
        text.matches("no Azure credentials").count(),
        1,
        "one line for the missing credentials: {text}"
    );
    assert!(text.contains(&token_file), "{text}");
    wait_until(
        "the provider-degraded taint",
        Duration::from_secs(30),
        || spillway_e2e::has_degraded_taint(&fx.node.client, &fx.node.node_name),
    )
    .await?;

    // A token ARM refuses: the next check names the refusal.
    std::fs::write(&token_file, "a-token-arm-refuses")?;
    wait_until("the refusal logged", Duration::from_secs(75), || async {
        Ok(std::fs::read_to_string(spillway_e2e::log_path(&log))?
            .contains("Azure refused the node's identity on resource group spillway-e2e"))
    })
    .await?;
    assert_eq!(ready(), Some(0.0));

    std::fs::write(&token_file, TOKEN)?;
    spillway_e2e::wait_provider_ready(
        admin_port,
        &fx.node.node_name,
        "aci",
        true,
        Duration::from_secs(75),
    )
    .await?;
    wait_until("the taint gone", Duration::from_secs(30), || async {
        Ok(!spillway_e2e::has_degraded_taint(&fx.node.client, &fx.node.node_name).await?)
    })
    .await?;
    Ok(())
}

/// `kubectl exec` and `attach` through the apiserver, the node and ACI's session
/// WebSockets on the fake ARM: a shell with stdin (its end typed as Ctrl-D), a terminal
/// whose size reaches ACI in the exec call, a program with arguments refused with what
/// ACI can run instead, attach's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed: run `make test`"]
async fn kubectl_exec_and_attach_reach_an_aci_container_through_its_websockets()
-> anyhow::Result<()> {
    let fx = AciFixture::new("e2e-aci-exec").await?;
    let (client, ns) = (&fx.node.client, &fx.node.ns);
    let _node = fx.start_node()?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &pod_on_node("web", &fx.node.node_name, json!({}))?,
    )
    .await?;
    wait_running(&pods, 1, Duration::from_secs(60)).await?;
    let kubectl_path = spillway_e2e::repo_root().join("e2e/.build/bin/kubectl");
    let kubeconfig = spillway_e2e::run_dir()
        .join("kubeconfig")
        .display()
        .to_string();
    let run = |args: &[&str], stdin: &[u8]| spillway_e2e::kubectl_with_stdin(&ns.name, args, stdin);
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();

    // A shell, fed on stdin; stdin's end reaches it as Ctrl-D.
    let out = run(
        &["exec", "-i", "web", "--", "/bin/sh"],
        b"echo hello from aci\nnot-a-command\n",
    )?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "hello from aci\nsh: not-a-command: not found\n"
    );

    // A terminal: its size goes with the exec call.
    let (code, screen) = spillway_e2e::pty::drive(
        &kubectl_path,
        &[
            "--kubeconfig",
            &kubeconfig,
            "-n",
            &ns.name,
            "exec",
            "-it",
            "web",
            "--",
            "/bin/sh",
        ],
        (120, 40),
        &[
            spillway_e2e::pty::Step::Type("stty size\n".into()),
            spillway_e2e::pty::Step::WaitFor("40 120".into()),
            spillway_e2e::pty::Step::Type("exit\n".into()),
        ],
    )?;
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains("40 120"), "{screen}");
    let sessions = fx.arm.session_counts();
    assert!(
        sessions.exec_refused.is_empty(),
        "{:?}",
        sessions.exec_refused
    );
    assert_eq!(
        sessions
            .exec_bodies
            .last()
            .map(|b| b["terminalSize"].clone()),
        Some(json!({"rows": 40, "cols": 120}))
    );
    assert_eq!(sessions.wrong_passwords, 0);

    // Arguments ACI cannot carry: refused, saying what it can run; never joined.
    let before = fx.arm.session_counts().exec_bodies.len();
    let out = run(&["exec", "web", "--", "ls", "/tmp"], b"")?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("one program without arguments"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(fx.arm.session_counts().exec_bodies.len(), before);

    // attach: the container's output stream.
    let out = run(&["attach", "web"], b"")?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("attached to app of "),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(fx.arm.session_counts().attaches, 1);
    Ok(())
}
