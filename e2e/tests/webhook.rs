//! `spillway webhook` on the test bed: the real apiserver calls it over TLS, overflow
//! replicas of an opted-in Deployment land on a virtual node, max-burst holds across a
//! ReplicaSet's parallel batch, other workloads are untouched, and pod creation goes on
//! when the webhook dies (failurePolicy Ignore).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use spillway_e2e::hostile_clients::HostileClients;
use spillway_e2e::{
    NodeCleanupGuard, TestNamespace, WebhookUnderTest, client, deployment, scale, virtual_node,
    virtual_node_of, wait_until,
};

/// Tests that put a fargate virtual node in the cluster, or burst pods onto one, run one
/// at a time: a burst pod may land on any virtual node of its provider, so another test's
/// node would take pods the test counts on its own.
static VIRTUAL_NODES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn placements(
    pods: &Api<Pod>,
    app: &str,
) -> anyhow::Result<Vec<(String, Option<String>, Option<String>)>> {
    let list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let labels: BTreeMap<String, String> = p.metadata.labels.clone().unwrap_or_default();
            (
                p.spec.and_then(|s| s.node_name).unwrap_or_default(),
                labels.get("spillway.io/placement").cloned(),
                p.status.and_then(|s| s.phase),
            )
        })
        .collect())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn overflow_replicas_burst_onto_the_virtual_node() -> anyhow::Result<()> {
    let _alone = VIRTUAL_NODES.lock().await;
    let client = client().await?;
    let ns = TestNamespace::create(&client, "e2e-burst").await?;
    let mut webhook = WebhookUnderTest::start(
        &format!("webhook-{}", ns.name),
        "capacityThreshold: 0.85\nhpaThreshold: 0.8\n",
    )
    .await?;

    let node_name = format!("spillway-fargate-{}", ns.name);
    let nodes: Api<Node> = Api::all(client.clone());
    // An operator taint (`--node-taint`) beside the node's own: burst pods are given its
    // toleration too, or they would stay Pending.
    let mut node = virtual_node(&node_name)?;
    let taints = node
        .spec
        .as_mut()
        .and_then(|s| s.taints.as_mut())
        .expect("taints");
    taints.push(serde_json::from_value(
        json!({"key": "example.com/burst", "value": "only", "effect": "NoSchedule"}),
    )?);
    nodes.create(&PostParams::default(), &node).await?;
    let _node_cleanup = NodeCleanupGuard(node_name.clone());
    let _hook = webhook.register_in(&client, &ns.name).await?;

    // Fill the regular nodes past the 85 % threshold with a workload that is not opted in.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let regular = nodes
        .list(&ListParams::default().labels("type=kwok"))
        .await?
        .items
        .len() as i32;
    deployments
        .create(
            &PostParams::default(),
            &deployment("filler", regular, "3600m", json!({}))?,
        )
        .await?;
    wait_until(
        "filler Running on regular nodes",
        Duration::from_secs(60),
        || async {
            let p = placements(&pods, "filler").await?;
            Ok(p.len() == regular as usize
                && p.iter()
                    .all(|(_, _, phase)| phase.as_deref() == Some("Running")))
        },
    )
    .await?;
    // The webhook sees the filler through its watch; give it a moment to catch up.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let annotations = json!({"spillway.io/burst": "true", "spillway.io/max-burst": "3"});
    deployments
        .create(
            &PostParams::default(),
            &deployment("web", 5, "100m", annotations)?,
        )
        .await?;
    wait_until(
        "web: 3 burst pods Running on the virtual node, 2 local",
        Duration::from_secs(60),
        || async {
            let p = placements(&pods, "web").await?;
            let on_virtual = p.iter().filter(|(node, placement, phase)| {
                node == &node_name
                    && placement.as_deref() == Some("burst")
                    && phase.as_deref() == Some("Running")
            });
            let local = p.iter().filter(|(node, placement, _)| {
                node.starts_with("kwok-node-") && placement.as_deref() == Some("local")
            });
            Ok(p.len() == 5 && on_virtual.count() == 3 && local.count() == 2)
        },
    )
    .await?;
    let burst_pod = pods
        .list(&ListParams::default().labels("app=web,spillway.io/placement=burst"))
        .await?
        .items
        .remove(0);
    let spec = burst_pod.spec.expect("spec");
    let tolerations = spec.tolerations.unwrap_or_default();
    for key in ["virtual-kubelet.io/provider", "example.com/burst"] {
        assert!(
            tolerations.iter().any(|t| t.key.as_deref() == Some(key)),
            "{key} tolerated: {tolerations:?}"
        );
    }
    assert!(spec.affinity.and_then(|a| a.node_affinity).is_some());
    let annotations = burst_pod.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations
            .get("controller.kubernetes.io/pod-deletion-cost")
            .map(String::as_str),
        Some("-1000")
    );

    for (_, placement, _) in placements(&pods, "filler").await? {
        assert_eq!(
            placement, None,
            "a workload that did not opt in is untouched"
        );
    }

    // The decisions show in the metrics alerts are built on.
    let metrics = std::process::Command::new("curl")
        .args([
            "-sf",
            &format!("http://127.0.0.1:{}/metrics", webhook.admin_port),
        ])
        .output()?;
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains(
            "spillway_admission_decisions_total{decision=\"burst\",reason=\"capacity\"} 3"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("spillway_admission_duration_seconds_count"),
        "{metrics}"
    );

    // Kill the webhook: pod creation must go on (failurePolicy Ignore).
    webhook.process.kill()?;
    scale(&deployments, "web", 7).await?;
    wait_until(
        "web scaled to 7 with the webhook dead",
        Duration::from_secs(60),
        || async { Ok(placements(&pods, "web").await?.len() == 7) },
    )
    .await?;
    let unlabelled = placements(&pods, "web")
        .await?
        .into_iter()
        .filter(|(_, placement, _)| placement.is_none())
        .count();
    assert_eq!(
        unlabelled, 2,
        "the two pods created without the webhook carry no decision"
    );
    Ok(())
}

/// `curl` to the webhook: the HTTP status it got, or None when the request failed
/// (refused, or the TLS handshake was). The server's certificate is not checked here
/// (curl's OpenSSL wants key usages the throw-away CA does not set); what these tests
/// look at is whether the webhook answers, and whom.
fn curl_status(url: &str, extra: &[&str]) -> anyhow::Result<Option<u16>> {
    let output = std::process::Command::new("curl")
        .args([
            "-sSk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .args(extra)
        .args(["-X", "POST", "-d", "{}", url])
        .output()?;
    let code: u16 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    Ok((code != 0).then_some(code))
}

fn readyz(admin_port: u16) -> Option<u16> {
    let output = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "2",
        ])
        .arg(format!("http://127.0.0.1:{admin_port}/readyz"))
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .ok()
        .filter(|c| *c != 0)
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn sigterm_turns_readiness_off_first_and_keeps_answering_while_it_drains()
-> anyhow::Result<()> {
    let mut webhook = WebhookUnderTest::start_with(
        "webhook-sigterm",
        "",
        &["--shutdown-delay-seconds", "3"],
        &[],
    )
    .await?;
    assert_eq!(readyz(webhook.admin_port), Some(200));
    let pid = webhook.process.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()?
            .success()
    );
    // Not ready at once, while reviews are still answered (400 for this empty one).
    wait_until("/readyz says 503", Duration::from_secs(2), || async {
        Ok(readyz(webhook.admin_port) == Some(503))
    })
    .await?;
    assert_eq!(
        curl_status(&webhook.url(), &[])?,
        Some(400),
        "the webhook still answers during the shutdown delay"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = webhook.process.child.try_wait()? {
            break status;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "still running 15 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn with_a_client_ca_only_clients_it_signed_may_call() -> anyhow::Result<()> {
    let pki = spillway_e2e::run_dir().join("pki");
    let ca = pki.join("ca.crt").display().to_string();
    let webhook =
        WebhookUnderTest::start_with("webhook-client-ca", "", &["--client-ca", &ca], &[]).await?;
    assert_eq!(
        curl_status(&webhook.url(), &[])?,
        None,
        "a client without a certificate got an answer"
    );
    let (cert, key) = (
        pki.join("admin.crt").display().to_string(),
        pki.join("admin.key").display().to_string(),
    );
    assert_eq!(
        curl_status(&webhook.url(), &["--cert", &cert, "--key", &key])?,
        Some(400),
        "a client the CA signed is answered"
    );
    Ok(())
}

/// A TLS connection to the webhook with its handshake done (then held, saying nothing).
#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn idle_connections_and_slow_clients_do_not_keep_the_apiserver_out() -> anyhow::Result<()> {
    // Its burst pods would land on another test's virtual node.
    let _alone = VIRTUAL_NODES.lock().await;
    let client = client().await?;
    let ns = TestNamespace::create(&client, "e2e-hostile").await?;
    let webhook = WebhookUnderTest::start(&format!("webhook-{}", ns.name), "").await?;
    let _hook = webhook.register_in(&client, &ns.name).await?;

    // 900 connections that finish their handshake and then say nothing, and 50 slowloris
    // clients: a header byte every 500 ms, never the end of the headers. (On the test bed
    // they share the apiserver's source address, so they stay below the per-source share
    // of 1,024 that keeps one real client from holding every slot.)
    let hostile = HostileClients::open(webhook.port, &webhook.ca_pem, 900, 50).await?;

    // Meanwhile the apiserver's reviews: every pod of an opted-in Deployment is answered.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    deployments
        .create(
            &PostParams::default(),
            &deployment("web", 20, "10m", json!({"spillway.io/burst": "true"}))?,
        )
        .await?;
    wait_until("20 pods created", Duration::from_secs(60), || async {
        Ok(placements(&pods, "web").await?.len() == 20)
    })
    .await?;
    let unanswered: Vec<_> = placements(&pods, "web")
        .await?
        .into_iter()
        .filter(|(_, placement, _)| placement.is_none())
        .collect();
    assert!(
        unanswered.is_empty(),
        "pods admitted without the webhook's answer: {unanswered:?}"
    );
    // The slow clients were cut off by the header timeout (10 s), not served forever.
    assert_eq!(hostile.idle_count(), 900);
    for lasted in hostile.slow_client_lifetimes().await? {
        assert!(
            lasted < Duration::from_secs(30),
            "a slowloris client lasted {lasted:?}"
        );
    }
    Ok(())
}

/// Lines of `log`'s file (e2e/.run/logs) that contain `needle`.
fn log_lines_with(log: &str, needle: &str) -> anyhow::Result<usize> {
    Ok(std::fs::read_to_string(spillway_e2e::log_path(log))?
        .lines()
        .filter(|line| line.contains(needle))
        .count())
}

/// Out of file descriptors, every `accept` fails at once while the connection waits in
/// the backlog: the webhook must back off (10 ms doubling to 1 s) rather than spin a
/// core and flood its log, and answer again once descriptors are free.
#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn out_of_file_descriptors_the_webhook_backs_off_and_recovers() -> anyhow::Result<()> {
    let log = format!("webhook-emfile-{}", spillway_e2e::free_port()?);
    let webhook = WebhookUnderTest::start(&log, "").await?;
    const FAILED: &str = "accept failed; backing off";
    // Cap its descriptors a few above what it holds now (prlimit changes a running process).
    let pid = webhook.process.child.id();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    let limit = format!("--nofile={}", open + 4);
    let capped = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &limit])
        .status()?;
    anyhow::ensure!(capped.success(), "prlimit {limit} failed");

    // 40 connections that never start TLS: the first few take the free descriptors (until
    // the 10 s handshake timeout), the rest wait in the backlog.
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(tokio::net::TcpStream::connect(("127.0.0.1", webhook.port)).await?);
    }
    wait_until(
        "accept fails for want of descriptors",
        Duration::from_secs(10),
        || async { Ok(log_lines_with(&log, FAILED)? > 0) },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failures = log_lines_with(&log, FAILED)?;
    // Backing off, 3 s of failures make about 10 lines; a loop that retried at once would
    // have made many thousands.
    assert!(
        failures <= 40,
        "{failures} failed accepts logged in about 3 s: no back-off"
    );
    assert!(
        log_lines_with(&log, "Too many open files")? > 0,
        "the failures were not for want of descriptors"
    );

    drop(held);
    wait_until(
        "the webhook answers again",
        Duration::from_secs(30),
        || async { Ok(curl_status(&webhook.url(), &[])? == Some(400)) },
    )
    .await?;
    Ok(())
}

/// The `spillway.io/provider` a burst pod's required node affinity names.
fn affinity_provider(pod: &Pod) -> Option<String> {
    let terms = pod
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .clone();
    terms
        .iter()
        .flat_map(|t| t.match_expressions.iter().flatten())
        .find(|e| e.key == "spillway.io/provider")
        .and_then(|e| e.values.as_ref()?.first().cloned())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn provider_auto_sends_each_pod_to_the_cheaper_usable_node() -> anyhow::Result<()> {
    let _alone = VIRTUAL_NODES.lock().await;
    let client = client().await?;
    let ns = TestNamespace::create(&client, "e2e-auto").await?;
    let mut webhook = WebhookUnderTest::start(
        &format!("webhook-{}", ns.name),
        "defaultProvider: fargate\n",
    )
    .await?;
    let nodes: Api<Node> = Api::all(client.clone());
    // One virtual node per provider (kwok keeps them Ready).
    let (fargate_node, aci_node) = (
        format!("spillway-fargate-{}", ns.name),
        format!("spillway-aci-{}", ns.name),
    );
    nodes
        .create(&PostParams::default(), &virtual_node(&fargate_node)?)
        .await?;
    let _fargate_cleanup = NodeCleanupGuard(fargate_node.clone());
    nodes
        .create(&PostParams::default(), &virtual_node_of(&aci_node, "aci")?)
        .await?;
    let _aci_cleanup = NodeCleanupGuard(aci_node.clone());
    wait_until(
        "both virtual nodes Ready",
        Duration::from_secs(30),
        || async {
            let mut ready = 0;
            for name in [&fargate_node, &aci_node] {
                let node = nodes.get(name).await?;
                let conditions = node.status.and_then(|s| s.conditions).unwrap_or_default();
                if conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
                {
                    ready += 1;
                }
            }
            Ok(ready == 2)
        },
    )
    .await?;
    let _hook = webhook.register_in(&client, &ns.name).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    // Every replica bursts (max-local 0); where to is the webhook's call.
    let annotations = json!({"spillway.io/burst": "true", "spillway.io/max-local": "0", "spillway.io/provider": "auto"});
    let sized = |name: &str, cpu: &str, memory: &str| -> anyhow::Result<Deployment> {
        let mut d = deployment(name, 1, cpu, annotations.clone())?;
        let container = &mut d.spec.template.spec.as_mut().unwrap().containers[0];
        container
            .resources
            .as_mut()
            .unwrap()
            .requests
            .as_mut()
            .unwrap()
            .insert(
                "memory".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity(memory.into()),
            );
        Ok(d)
    };
    let provider_of = |app: &'static str| {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels(&format!("app={app}")))
                .await?;
            anyhow::Ok(
                list.items
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .find_map(affinity_provider),
            )
        }
    };
    // A quarter vCPU with 3 GiB: Fargate would round up to half a vCPU, ACI bills what is asked.
    deployments
        .create(&PostParams::default(), &sized("lopsided", "250m", "3Gi")?)
        .await?;
    // A whole vCPU with 2 GiB: Fargate's list price is lower.
    deployments
        .create(&PostParams::default(), &sized("even", "1", "2Gi")?)
        .await?;
    wait_until("both placed", Duration::from_secs(60), || async {
        Ok(provider_of("lopsided").await?.is_some() && provider_of("even").await?.is_some())
    })
    .await?;
    assert_eq!(provider_of("lopsided").await?.as_deref(), Some("aci"));
    assert_eq!(provider_of("even").await?.as_deref(), Some("fargate"));
    wait_until(
        "the lopsided pod runs on the ACI node",
        Duration::from_secs(60),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=lopsided"))
                .await?;
            Ok(list.items.iter().any(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(aci_node.as_str())
            }))
        },
    )
    .await?;

    // The ACI node turns degraded: the next such pod goes to Fargate after all.
    spillway_e2e::kubectl(&[
        "taint",
        "node",
        &aci_node,
        "spillway.io/provider-degraded=aci:NoSchedule",
    ])?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    deployments
        .create(
            &PostParams::default(),
            &sized("lopsided-later", "250m", "3Gi")?,
        )
        .await?;
    wait_until(
        "placed while ACI is degraded",
        Duration::from_secs(60),
        || async { Ok(provider_of("lopsided-later").await?.is_some()) },
    )
    .await?;
    assert_eq!(
        provider_of("lopsided-later").await?.as_deref(),
        Some("fargate")
    );
    webhook.process.kill()?;
    Ok(())
}

/// The `spillway.io/placement` and `spillway.io/reason` labels and the provider pinned by
/// affinity of the live pods of `app`.
async fn decisions(
    pods: &Api<Pod>,
    app: &str,
) -> anyhow::Result<Vec<(String, String, Option<String>)>> {
    let list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
            (
                label("spillway.io/placement"),
                label("spillway.io/reason"),
                affinity_provider(p),
            )
        })
        .collect())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn replicas_go_only_to_a_virtual_node_that_can_take_them() -> anyhow::Result<()> {
    let _alone = VIRTUAL_NODES.lock().await;
    let client = client().await?;
    let ns = TestNamespace::create(&client, "e2e-usable").await?;
    let mut webhook = WebhookUnderTest::start(
        &format!("webhook-{}", ns.name),
        "defaultProvider: fargate\n",
    )
    .await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let (fargate_node, aci_node) = (
        format!("spillway-fargate-{}", ns.name),
        format!("spillway-aci-{}", ns.name),
    );
    // A degraded Fargate node and a healthy ACI node.
    let mut fargate = virtual_node(&fargate_node)?;
    fargate.spec.as_mut().unwrap().taints.as_mut().unwrap().push(
        serde_json::from_value(
            json!({"key": "spillway.io/provider-degraded", "value": "fargate", "effect": "NoSchedule"}),
        )?,
    );
    nodes.create(&PostParams::default(), &fargate).await?;
    let _fargate_cleanup = NodeCleanupGuard(fargate_node.clone());
    nodes
        .create(&PostParams::default(), &virtual_node_of(&aci_node, "aci")?)
        .await?;
    let _aci_cleanup = NodeCleanupGuard(aci_node.clone());
    wait_until(
        "both virtual nodes Ready",
        Duration::from_secs(30),
        || async {
            let mut ready = 0;
            for name in [&fargate_node, &aci_node] {
                let conditions = nodes
                    .get(name)
                    .await?
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default();
                ready += conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
                    as usize;
            }
            Ok(ready == 2)
        },
    )
    .await?;
    let _hook = webhook.register_in(&client, &ns.name).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    // Every replica is under pressure (max-local 0); where it may go is the question.
    let create = |name: &'static str, provider: &'static str, spec: serde_json::Value| {
        let deployments = deployments.clone();
        async move {
            let annotations = json!({"spillway.io/burst": "true", "spillway.io/max-local": "0", "spillway.io/provider": provider});
            let mut d = deployment(name, 1, "100m", annotations.clone())?;
            // On the template too: the pod carries its policy itself, so a webhook whose
            // watch has not shown the Deployment yet (a loaded machine) decides the same.
            d.spec.template.metadata.as_mut().unwrap().annotations =
                Some(serde_json::from_value(annotations)?);
            let mut template = serde_json::to_value(d.spec.template.spec.take())?;
            for (k, v) in spec.as_object().into_iter().flatten() {
                template[k] = v.clone();
            }
            d.spec.template.spec = Some(serde_json::from_value(template)?);
            deployments.create(&PostParams::default(), &d).await?;
            anyhow::Ok(())
        }
    };
    let placed = |app: &'static str| {
        let pods = pods.clone();
        async move {
            let found = decisions(&pods, app).await?;
            anyhow::Ok(found.into_iter().next())
        }
    };
    let wait_placed = |app: &'static str| async move {
        wait_until(
            &format!("{app} placed"),
            Duration::from_secs(60),
            || async { Ok(placed(app).await?.is_some()) },
        )
        .await?;
        anyhow::Ok(placed(app).await?.unwrap())
    };
    create("fixed", "fargate", json!({})).await?;
    create("ordered", "fargate,aci", json!({})).await?;
    create("picky", "aci", json!({"nodeSelector": {"disk": "ssd"}})).await?;
    create(
        "spread",
        "aci",
        json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "spread"}}}]}),
    )
    .await?;
    let local = |reason: &str| ("local".to_owned(), reason.to_owned(), None);
    // A degraded fixed provider keeps new replicas local, for an autoscaler to see.
    assert_eq!(wait_placed("fixed").await?, local("provider-unavailable"));
    // An ordered list falls through to the next usable provider.
    assert_eq!(
        wait_placed("ordered").await?,
        (
            "burst".to_owned(),
            "max-local".to_owned(),
            Some("aci".to_owned())
        )
    );
    // The pod's own constraints rule the virtual node out.
    assert_eq!(wait_placed("picky").await?, local("constraints"));
    assert_eq!(wait_placed("spread").await?, local("constraints"));

    // Fargate recovers: the next replica of the fixed workload bursts there; then its
    // node is removed and the one after stays local again.
    spillway_e2e::kubectl(&[
        "taint",
        "node",
        &fargate_node,
        "spillway.io/provider-degraded-",
    ])?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    create("recovered", "fargate", json!({})).await?;
    let recovered = wait_placed("recovered").await?;
    assert_eq!(
        (recovered.0.as_str(), recovered.2.as_deref()),
        ("burst", Some("fargate"))
    );
    nodes.delete(&fargate_node, &Default::default()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    create("gone", "fargate", json!({})).await?;
    assert_eq!(wait_placed("gone").await?, local("provider-unavailable"));
    // A Fargate node that is there but NotReady (no kwok behind it, its Ready condition
    // written False, as when a node's heartbeat stops) takes nothing either.
    let mut not_ready = virtual_node(&fargate_node)?;
    not_ready
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove("kwok.x-k8s.io/node");
    nodes.create(&PostParams::default(), &not_ready).await?;
    let status = json!({"status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "no heartbeat"}
    ]}});
    nodes
        .patch_status(
            &fargate_node,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(status),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    create("not-ready", "fargate", json!({})).await?;
    assert_eq!(
        wait_placed("not-ready").await?,
        local("provider-unavailable")
    );
    webhook.process.kill()?;
    Ok(())
}
