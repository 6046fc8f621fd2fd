//! Burst is a bridge, on the test bed with a real autoscaler (`e2e/testbed up --karpenter`:
//! Karpenter with its kwok cloud provider and a NodePool tainted
//! `spillway.io/testbed-pool=karpenter`). Driven through `spillway run --webhook-url`: a
//! sustained scale-up of a full cluster bursts, Spillway asks Karpenter for nodes, every
//! burst replica comes home without the PodDisruptionBudget ever broken, the request is
//! withdrawn and the nodes stay; a spike shorter than `afterSeconds` asks for nothing;
//! placeholders are preempted by the returning replicas and never reach the virtual node;
//! the cluster cap holds; a restart mid-backfill adopts the standing request and removes
//! an orphaned one.
//!
//! The pods request 3 of the fixed nodes' 4 cores, so the three fixed nodes take three
//! replicas and any more find no room (`no-fit`) until Karpenter adds a node. The tests
//! here share the Karpenter pool, so they run one at a time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;
use spillway_e2e::{
    RunUnderTest, TestNamespace, client, deployment, kubectl, regular_nodes_idle, sample, scale,
    status_json, testbed_env, wait_until,
};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const APP: &str = "bridge";

/// Whether the test bed runs Karpenter; without it these scenarios cannot run, and say so.
fn karpenter_running() -> bool {
    testbed_env()
        .map(|env| env.get("SPILLWAY_TESTBED_KARPENTER").map(String::as_str) == Some("1"))
        .unwrap_or(false)
}

/// The scenarios' opted-in Deployment: pods of 3 cores and 1 GiB that tolerate Karpenter's
/// pool.
fn bridge_deployment(replicas: i32) -> anyhow::Result<Deployment> {
    let mut bridge = deployment(APP, replicas, "3", json!({"spillway.io/burst": "true"}))?;
    let pod = bridge.spec.template.spec.as_mut().expect("a pod template");
    pod.tolerations = Some(vec![serde_json::from_value(json!({
        "key": "spillway.io/testbed-pool", "operator": "Equal",
        "value": "karpenter", "effect": "NoSchedule"
    }))?]);
    let requests = pod.containers[0]
        .resources
        .as_mut()
        .and_then(|r| r.requests.as_mut())
        .expect("the template's requests");
    requests.insert(
        "memory".into(),
        k8s_openapi::apimachinery::pkg::api::resource::Quantity("1Gi".into()),
    );
    Ok(bridge)
}

/// Live pods of the app as (name, node, Ready).
async fn live(pods: &Api<Pod>) -> anyhow::Result<Vec<(String, String, bool)>> {
    Ok(pods
        .list(&ListParams::default().labels(&format!("app={APP}")))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            (
                p.metadata.name.unwrap_or_default(),
                p.spec.and_then(|s| s.node_name).unwrap_or_default(),
                ready,
            )
        })
        .collect())
}

fn on_virtual(pods: &[(String, String, bool)], run: &RunUnderTest) -> usize {
    pods.iter()
        .filter(|(_, node, _)| *node == run.node_name)
        .count()
}

async fn karpenter_nodes(client: &kube::Client) -> anyhow::Result<Vec<String>> {
    Ok(Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels("spillway.io/testbed-pool=karpenter"))
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect())
}

fn capacity_buffers(client: &kube::Client, namespace: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("autoscaling.x-k8s.io", "v1beta1", "CapacityBuffer"),
        "capacitybuffers",
    );
    Api::namespaced_with(client.clone(), namespace, &resource)
}

async fn placeholders(pods: &Api<Pod>) -> anyhow::Result<Vec<Pod>> {
    Ok(pods
        .list(&ListParams::default().labels("spillway.io/backfill-for"))
        .await?
        .items)
}

async fn event_reasons(client: &kube::Client, namespace: &str) -> anyhow::Result<Vec<String>> {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), namespace);
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect())
}

/// Waits until Karpenter's pool has no nodes left from an earlier scenario (it removes
/// empty nodes after `consolidateAfter`) and the fixed nodes are idle.
async fn pool_empty(client: &kube::Client) -> anyhow::Result<()> {
    wait_until(
        "Karpenter's pool empty",
        Duration::from_secs(180),
        || async { Ok(karpenter_nodes(client).await?.is_empty()) },
    )
    .await?;
    regular_nodes_idle(client, Duration::from_secs(120)).await
}

/// One scenario, run alone: Karpenter's pool empty, the fixed nodes idle, a namespace of
/// its own and `spillway run` with `config`. Fields drop in order: the process and its node
/// go, then the namespace, and only then the next scenario starts.
struct Scenario {
    client: kube::Client,
    deployments: Api<Deployment>,
    pods: Api<Pod>,
    run: RunUnderTest,
    ns: TestNamespace,
    _pool: PoolReset,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// Gives the nodes Karpenter added back when dropped (even on panic), and waits until they
/// are gone: they are Ready regular nodes, so left behind they would count in the cluster
/// capacity every later scenario on the test bed computes its pressure from.
struct PoolReset;

impl Drop for PoolReset {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "nodeclaims", "--all", "--timeout=180s"]);
        let _ = kubectl(&[
            "wait",
            "--for=delete",
            "nodes",
            "-l",
            "spillway.io/testbed-pool=karpenter",
            "--timeout=180s",
        ]);
    }
}

impl Scenario {
    async fn start(prefix: &str, config: &str) -> anyhow::Result<Self> {
        if !karpenter_running() {
            anyhow::bail!(
                "the test bed runs no Karpenter: start it with e2e/testbed up --karpenter"
            );
        }
        let serial = SERIAL.lock().await;
        let client = client().await?;
        pool_empty(&client).await?;
        let ns = TestNamespace::create(&client, prefix).await?;
        let run = RunUnderTest::start(&ns.name, &ns.name, config).await?;
        Ok(Self {
            deployments: Api::namespaced(client.clone(), &ns.name),
            pods: Api::namespaced(client.clone(), &ns.name),
            client,
            run,
            ns,
            _pool: PoolReset,
            _serial: serial,
        })
    }
}

/// Three replicas fill the fixed nodes (one each), then two more find no room and burst:
/// scaled in two steps, since the webhook counts the node room its in-flight decisions
/// take only once their pods are bound.
async fn start_with_a_full_cluster(
    deployments: &Api<Deployment>,
    pods: &Api<Pod>,
) -> anyhow::Result<()> {
    deployments
        .create(&PostParams::default(), &bridge_deployment(3)?)
        .await?;
    wait_until(
        "3 replicas Ready on the fixed nodes",
        Duration::from_secs(60),
        || async {
            let pods = live(pods).await?;
            Ok(pods.len() == 3 && pods.iter().all(|p| p.2))
        },
    )
    .await?;
    scale(deployments, APP, 5).await
}

fn config(extra: &str) -> String {
    // afterSeconds 5 and a 1 s reconcile keep the scenario short; the rebalance's own
    // cooldown is long, so only backfill can bring the replicas home here.
    format!(
        "rebalance:\n  cooldownSeconds: 3600\n  belowUtilization: 0.01\npendingSpill:\n  afterSeconds: 3600\nbackfill:\n  afterSeconds: 5\n  placeholderImage: spillway:e2e\n{extra}"
    )
}

#[tokio::test]
#[ignore = "needs the test bed with Karpenter: run `make test` (e2e/testbed up --karpenter)"]
async fn a_sustained_scale_up_bursts_then_comes_home_on_the_nodes_spillway_asked_for()
-> anyhow::Result<()> {
    let scenario = Scenario::start("backfill", &config("")).await?;
    let Scenario {
        client,
        deployments,
        pods,
        run,
        ns,
        ..
    } = &scenario;
    let pdbs: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(client.clone(), &ns.name);
    pdbs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": APP},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": APP}}}
        }))?,
    )
    .await?;
    // Watch Ready replicas (recorded once all 5 are Ready): never below 5 - maxUnavailable once all 5 run.
    let all_ready = Arc::new(AtomicBool::new(false));
    let min_ready = Arc::new(AtomicI32::new(i32::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (pods, all_ready, min_ready, stop) = (
            pods.clone(),
            all_ready.clone(),
            min_ready.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(list) = live(&pods).await {
                    let ready = list.iter().filter(|p| p.2).count() as i32;
                    if ready >= 5 {
                        all_ready.store(true, Ordering::Relaxed);
                    }
                    if all_ready.load(Ordering::Relaxed) {
                        min_ready.fetch_min(ready, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    // The sustained step: three replicas fill the fixed nodes, two more find no room and
    // burst.
    start_with_a_full_cluster(deployments, pods).await?;
    wait_until(
        "2 replicas burst and Running",
        Duration::from_secs(60),
        || async {
            let pods = live(pods).await?;
            Ok(on_virtual(&pods, run) == 2 && pods.iter().filter(|p| p.2).count() == 5)
        },
    )
    .await?;

    // Karpenter serves CapacityBuffer here, so `auto` asks with one, for 2 replicas.
    let buffers = capacity_buffers(client, &ns.name);
    wait_until(
        "a CapacityBuffer for the 2 burst replicas",
        Duration::from_secs(60),
        || async {
            let list = buffers.list(&ListParams::default()).await?;
            Ok(list
                .items
                .iter()
                .any(|b| b.data["spec"]["replicas"] == json!(2)))
        },
    )
    .await?;
    // The same pass marks the Deployment and sets the gauge just after it applies the
    // buffer: wait for them rather than race that pass.
    wait_until(
        "the Deployment carries the backfill mark while the request stands",
        Duration::from_secs(15),
        || async {
            Ok(deployments
                .get(APP)
                .await?
                .metadata
                .annotations
                .unwrap_or_default()
                .contains_key("spillway.io/backfill"))
        },
    )
    .await?;
    wait_until(
        "spillway_backfill_requested says 6 cores",
        Duration::from_secs(15),
        || async {
            Ok(sample(
                &run.metrics()?,
                "spillway_backfill_requested{resource=\"cpu\"}",
            ) == Some(6.0))
        },
    )
    .await?;

    // Karpenter adds nodes because Spillway asked, and every burst replica comes home.
    wait_until(
        "Karpenter adds a node",
        Duration::from_secs(120),
        || async { Ok(!karpenter_nodes(client).await?.is_empty()) },
    )
    .await?;
    wait_until(
        "every replica home, Running and Ready",
        Duration::from_secs(240),
        || async {
            let pods = live(pods).await?;
            Ok(pods.len() == 5 && on_virtual(&pods, run) == 0 && pods.iter().all(|p| p.2))
        },
    )
    .await?;
    wait_until(
        "request withdrawn and the mark removed",
        Duration::from_secs(60),
        || async {
            let buffers = buffers.list(&ListParams::default()).await?.items;
            let annotations = deployments
                .get(APP)
                .await?
                .metadata
                .annotations
                .unwrap_or_default();
            Ok(buffers.is_empty() && !annotations.contains_key("spillway.io/backfill"))
        },
    )
    .await?;
    let nodes_home = karpenter_nodes(client).await?;

    // It settles: no re-burst, the nodes stay (they hold real pods), nothing else evicted.
    let evictions_before = sample(
        &run.metrics()?,
        "spillway_rebalance_evictions_total{result=\"evicted\"}",
    );
    tokio::time::sleep(Duration::from_secs(45)).await;
    let pods_now = live(pods).await?;
    assert_eq!(
        on_virtual(&pods_now, run),
        0,
        "no replica burst again: {pods_now:?}"
    );
    assert_eq!(pods_now.len(), 5);
    let nodes_now = karpenter_nodes(client).await?;
    for node in &nodes_home {
        assert!(
            nodes_now.contains(node),
            "node {node} was taken away: {nodes_now:?}"
        );
    }
    let metrics = run.metrics()?;
    assert_eq!(
        sample(
            &metrics,
            "spillway_rebalance_evictions_total{result=\"evicted\"}"
        ),
        evictions_before,
        "no eviction after the replicas were home"
    );
    assert_eq!(
        sample(&metrics, "spillway_backfill_requested{resource=\"cpu\"}"),
        Some(0.0)
    );
    stop.store(true, Ordering::Relaxed);
    sampler.await?;
    assert!(
        min_ready.load(Ordering::Relaxed) >= 4,
        "Ready replicas fell to {} (PDB maxUnavailable 1 of 5)",
        min_ready.load(Ordering::Relaxed)
    );
    let reasons = event_reasons(client, &ns.name).await?;
    for reason in ["BackfillRequested", "Rebalanced", "BackfillSatisfied"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "no {reason} Event: {reasons:?}"
        );
    }
    // The scale-in that ends the load lets the pool empty for the next scenario.
    scale(deployments, APP, 0).await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed with Karpenter: run `make test` (e2e/testbed up --karpenter)"]
async fn a_spike_shorter_than_after_seconds_requests_nothing() -> anyhow::Result<()> {
    let config = config("").replace("afterSeconds: 5", "afterSeconds: 30");
    let scenario = Scenario::start("backfill-spike", &config).await?;
    let Scenario {
        client,
        deployments,
        pods,
        run,
        ns,
        ..
    } = &scenario;
    start_with_a_full_cluster(deployments, pods).await?;
    wait_until("2 replicas burst", Duration::from_secs(60), || async {
        Ok(on_virtual(&live(pods).await?, run) == 2)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    // The spike ends after 10 s of the 30: the burst replicas go first on scale-in.
    scale(deployments, APP, 3).await?;
    wait_until("burst replicas gone", Duration::from_secs(60), || async {
        Ok(on_virtual(&live(pods).await?, run) == 0)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert!(
        capacity_buffers(client, &ns.name)
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
    );
    assert!(placeholders(pods).await?.is_empty());
    let annotations = deployments
        .get(APP)
        .await?
        .metadata
        .annotations
        .unwrap_or_default();
    assert!(!annotations.contains_key("spillway.io/backfill"));
    assert!(
        karpenter_nodes(client).await?.is_empty(),
        "no node was asked for"
    );
    let reasons = event_reasons(client, &ns.name).await?;
    assert!(
        !reasons.iter().any(|r| r == "BackfillRequested"),
        "{reasons:?}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed with Karpenter: run `make test` (e2e/testbed up --karpenter)"]
async fn placeholders_are_preempted_by_the_returning_replicas_and_the_cap_holds()
-> anyhow::Result<()> {
    // Placeholders (what `auto` picks where no CapacityBuffer CRD is served), capped at
    // 3 cores: room for one of the two burst replicas.
    let scenario = Scenario::start(
        "backfill-ph",
        &config("  mode: placeholders\n  maxCpu: \"3\"\n"),
    )
    .await?;
    let Scenario {
        client,
        deployments,
        pods,
        run,
        ns,
        ..
    } = &scenario;
    start_with_a_full_cluster(deployments, pods).await?;
    wait_until("2 replicas burst", Duration::from_secs(60), || async {
        Ok(on_virtual(&live(pods).await?, run) == 2)
    })
    .await?;
    let seen_on_virtual = Arc::new(AtomicBool::new(false));
    let max_placeholders = Arc::new(AtomicI32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (pods, seen, max, stop, node) = (
            pods.clone(),
            seen_on_virtual.clone(),
            max_placeholders.clone(),
            stop.clone(),
            run.node_name.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(list) = placeholders(&pods).await {
                    let live = list
                        .iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .count();
                    max.fetch_max(live as i32, Ordering::Relaxed);
                    if list.iter().any(|p| {
                        p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
                    }) {
                        seen.store(true, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    wait_until(
        "one replica home (the cap's worth)",
        Duration::from_secs(240),
        || async { Ok(on_virtual(&live(pods).await?, run) == 1) },
    )
    .await?;
    // Once one is home the cap has room for the other: both come home in the end.
    wait_until("every replica home", Duration::from_secs(240), || async {
        let pods = live(pods).await?;
        Ok(pods.len() == 5 && on_virtual(&pods, run) == 0 && pods.iter().all(|p| p.2))
    })
    .await?;
    wait_until("placeholders gone", Duration::from_secs(60), || async {
        Ok(placeholders(pods)
            .await?
            .iter()
            .all(|p| p.metadata.deletion_timestamp.is_some()))
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    watcher.await?;
    assert!(
        !seen_on_virtual.load(Ordering::Relaxed),
        "a placeholder reached the virtual node"
    );
    assert_eq!(
        max_placeholders.load(Ordering::Relaxed),
        1,
        "maxCpu 3 holds one 3-core placeholder"
    );
    let events: BTreeMap<String, usize> =
        event_reasons(client, &ns.name)
            .await?
            .into_iter()
            .fold(BTreeMap::new(), |mut m, r| {
                *m.entry(r).or_default() += 1;
                m
            });
    assert!(events.contains_key("BackfillRequested"), "{events:?}");
    scale(deployments, APP, 0).await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed with Karpenter: run `make test` (e2e/testbed up --karpenter)"]
async fn a_restart_mid_backfill_adopts_the_request_and_removes_orphans() -> anyhow::Result<()> {
    // afterSeconds 5, and Karpenter's node takes 15 s to register: Spillway stops between
    // the request and the node.
    let mut scenario = Scenario::start("backfill-restart", &config("")).await?;
    let (client, namespace) = (scenario.client.clone(), scenario.ns.name.clone());
    let (deployments, pods) = (scenario.deployments.clone(), scenario.pods.clone());
    start_with_a_full_cluster(&deployments, &pods).await?;
    wait_until("2 replicas burst", Duration::from_secs(60), || async {
        Ok(on_virtual(&live(&pods).await?, &scenario.run) == 2)
    })
    .await?;
    let buffers = capacity_buffers(&client, &namespace);
    wait_until(
        "a CapacityBuffer for the 2 burst replicas",
        Duration::from_secs(60),
        || async {
            let list = buffers.list(&ListParams::default()).await?;
            Ok(list
                .items
                .iter()
                .any(|b| b.data["spec"]["replicas"] == json!(2)))
        },
    )
    .await?;
    // `spillway status -o json` shows the request and how long the burst has lasted.
    let status = status_json(&namespace)?;
    let row = status["workloads"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["workload"] == APP))
        .cloned()
        .unwrap_or_default();
    assert_eq!(row["backfill"], 2, "{status}");
    assert!(
        row["oldestBurstSeconds"].as_u64().is_some_and(|s| s >= 5),
        "{status}"
    );
    // A request left by a Deployment that no longer exists.
    let orphan: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "autoscaling.x-k8s.io/v1beta1",
        "kind": "CapacityBuffer",
        "metadata": {"name": "spillway-backfill-gone", "labels": {
            "app.kubernetes.io/managed-by": "spillway", "spillway.io/backfill-for": "gone"}},
        "spec": {"scalableRef": {"apiGroup": "apps", "kind": "Deployment", "name": "gone"},
            "replicas": 1}
    }))?;
    buffers.create(&PostParams::default(), &orphan).await?;

    let stopped = scenario.run.terminate()?;
    assert!(stopped.success(), "spillway run exits cleanly: {stopped}");
    assert!(
        buffers.get_opt("spillway-backfill-bridge").await?.is_some(),
        "a stopping controller leaves its request standing"
    );
    let second = RunUnderTest::start(&namespace, &namespace, &config("")).await?;
    wait_until(
        "the orphaned request removed",
        Duration::from_secs(60),
        || async { Ok(buffers.get_opt("spillway-backfill-gone").await?.is_none()) },
    )
    .await?;
    wait_until(
        "every replica home, Running and Ready",
        Duration::from_secs(240),
        || async {
            let pods = live(&pods).await?;
            Ok(pods.len() == 5 && on_virtual(&pods, &second) == 0 && pods.iter().all(|p| p.2))
        },
    )
    .await?;
    wait_until(
        "request withdrawn and the mark removed",
        Duration::from_secs(60),
        || async {
            let buffers = buffers.list(&ListParams::default()).await?.items;
            let annotations = deployments
                .get(APP)
                .await?
                .metadata
                .annotations
                .unwrap_or_default();
            Ok(buffers.is_empty() && !annotations.contains_key("spillway.io/backfill"))
        },
    )
    .await?;
    // Adopted, not asked anew: one BackfillRequested (the first controller's).
    let reasons = event_reasons(&client, &namespace).await?;
    let requested = reasons.iter().filter(|r| *r == "BackfillRequested").count();
    assert_eq!(requested, 1, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r == "BackfillSatisfied"),
        "{reasons:?}"
    );
    // The second controller saw both burst replicas go home, and what they cost meanwhile.
    let metrics = second.metrics()?;
    assert!(
        sample(&metrics, "spillway_burst_duration_seconds_count").is_some_and(|n| n >= 2.0),
        "{metrics}"
    );
    let usd = metrics
        .lines()
        .filter(|l| l.starts_with("spillway_burst_usd_total{") && l.contains("workload=\"bridge\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert!(usd > 0.0, "{metrics}");
    scale(&deployments, APP, 0).await?;
    Ok(())
}
