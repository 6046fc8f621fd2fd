//! Controller benchmarks on the test bed (`e2e/testbed up` first):
//! - `controller-loop`: with `spillway run` and a short cooldown, the time from capacity
//!   freed to the first rebalance eviction and to zero burst replicas, and from a pod going
//!   Unschedulable to its spill (each less the configured delay: Spillway's own latency);
//! - `controller-scale`: `spillway controller` RSS and the time of one full pass with
//!   1,000 simulated nodes and 30,000 pods, against the webhook's RSS over the same cluster
//!   (the same index without the controller's pod store) in the same run.

use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use spillway_e2e::{
    ControllerUnderTest, RunUnderTest, TestNamespace, WebhookUnderTest, client, deployment,
    metrics_text, sample, scale, wait_until,
};

use crate::report;
use crate::stats::rss_kib;

/// Placement of the live pods of `app`: (burst on the virtual node, local on a regular node).
async fn split(pods: &Api<Pod>, app: &str, node: &str) -> anyhow::Result<(usize, usize, bool)> {
    let list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?;
    let mut burst = 0;
    let mut local = 0;
    let mut any_deleting = false;
    for pod in &list.items {
        if pod.metadata.deletion_timestamp.is_some() {
            any_deleting = true;
            continue;
        }
        let on = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("");
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if running && on == node {
            burst += 1;
        } else if running && on.starts_with("kwok-node-") {
            local += 1;
        }
    }
    Ok((burst, local, any_deleting))
}

/// Polls `check` every 20 ms until it holds.
async fn time_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let start = Instant::now();
    loop {
        if check().await? {
            return Ok(());
        }
        anyhow::ensure!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Rebalance and pending-spill latencies, three rounds each.
pub async fn controller_loop() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "bench-loop").await?;
    let cooldown = 5u64;
    let after = 2u64;
    let config = format!(
        "rebalance:\n  cooldownSeconds: {cooldown}\n  maxEvictionsPerMinute: 120\npendingSpill:\n  afterSeconds: {after}\n"
    );
    let run = RunUnderTest::start(&ns.name, &ns.name, &config).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let regular = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels("type=kwok"))
        .await?
        .items
        .len() as i32;
    deployments
        .create(
            &PostParams::default(),
            &deployment("filler", 0, "3600m", json!({}))?,
        )
        .await?;
    deployments
        .create(
            &PostParams::default(),
            &deployment("web", 0, "100m", json!({"spillway.io/burst": "true"}))?,
        )
        .await?;
    let mut first_eviction = Vec::new();
    let mut all_back = Vec::new();
    let replicas = 6;
    for _round in 0..3 {
        scale(&deployments, "filler", regular).await?;
        wait_until("filler running", Duration::from_secs(60), || async {
            Ok(split(&pods, "filler", &run.node_name).await?.1 == regular as usize)
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        scale(&deployments, "web", replicas).await?;
        wait_until("web bursts", Duration::from_secs(60), || async {
            Ok(split(&pods, "web", &run.node_name).await?.0 == replicas as usize)
        })
        .await?;
        // Burst pods younger than the cooldown are never evicted: let them age first.
        tokio::time::sleep(Duration::from_secs(cooldown)).await;
        scale(&deployments, "filler", 0).await?;
        let freed = Instant::now();
        wait_until("filler gone", Duration::from_secs(60), || async {
            Ok(pods
                .list(&ListParams::default().labels("app=filler"))
                .await?
                .items
                .is_empty())
        })
        .await?;
        time_until("first eviction", Duration::from_secs(60), || async {
            Ok(split(&pods, "web", &run.node_name).await?.2)
        })
        .await?;
        first_eviction.push(freed.elapsed());
        time_until("zero burst", Duration::from_secs(120), || async {
            let (burst, local, _) = split(&pods, "web", &run.node_name).await?;
            Ok(burst == 0 && local == replicas as usize)
        })
        .await?;
        all_back.push(freed.elapsed());
        scale(&deployments, "web", 0).await?;
        wait_until("web gone", Duration::from_secs(60), || async {
            Ok(pods
                .list(&ListParams::default().labels("app=web"))
                .await?
                .items
                .is_empty())
        })
        .await?;
    }

    // Pending spill: one replica more than regular nodes, one per node.
    let mut spill = deployment("spill", 0, "100m", json!({"spillway.io/burst": "true"}))?;
    spill
        .spec
        .template
        .spec
        .as_mut()
        .expect("pod spec")
        .affinity = Some(serde_json::from_value(json!({"podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [{
                "labelSelector": {"matchLabels": {"app": "spill"}},
                "topologyKey": "kubernetes.io/hostname"}]}}))?);
    deployments.create(&PostParams::default(), &spill).await?;
    let mut spilled = Vec::new();
    for _round in 0..3 {
        scale(&deployments, "spill", regular + 1).await?;
        time_until("a pod Unschedulable", Duration::from_secs(60), || async {
            let list = pods
                .list(&ListParams::default().labels("app=spill"))
                .await?;
            Ok(list.items.iter().any(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c.reason.as_deref() == Some("Unschedulable"))
                    })
            }))
        })
        .await?;
        let marked = Instant::now();
        time_until("the pod spilled", Duration::from_secs(60), || async {
            let list = pods
                .list(&ListParams::default().labels("app=spill"))
                .await?;
            Ok(list.items.iter().any(|p| {
                p.metadata.labels.as_ref().is_some_and(|l| {
                    l.get("spillway.io/reason").map(String::as_str) == Some("pending")
                })
            }))
        })
        .await?;
        spilled.push(marked.elapsed());
        scale(&deployments, "spill", 0).await?;
        wait_until("spill gone", Duration::from_secs(60), || async {
            Ok(pods
                .list(&ListParams::default().labels("app=spill"))
                .await?
                .items
                .is_empty())
        })
        .await?;
    }
    let evictions = sample(
        &run.metrics()?,
        "spillway_rebalance_evictions_total{result=\"evicted\"}",
    );
    let secs = |d: &Duration| format!("{:.1} s", d.as_secs_f64());
    let list = |v: &[Duration]| v.iter().map(secs).collect::<Vec<_>>().join(", ");
    let body = format!(
        "## Controller loop latencies (test bed, `spillway run`)\n\n\
         {}. Three rounds each; the controller passes every 1 s (`--reconcile-interval-seconds 1`), \
         `rebalance.cooldownSeconds: {cooldown}`, `pendingSpill.afterSeconds: {after}`. Times are \
         from the moment the filler's scale-to-0 was accepted (capacity freed; kwok removes its \
         pods within about a second) and include that removal, the cooldown and the watch delays.\n\n\
         | what | rounds | minus the configured delay |\n|---|---|---|\n\
         | capacity freed → first rebalance eviction | {} | {} |\n\
         | capacity freed → zero burst replicas ({replicas} replicas, one workload, one at a time) | {} | {} |\n\
         | pod Unschedulable (the condition's own timestamp, 1 s resolution) → spilled | {} | {} |\n\n\
         Rebalance evictions counted by the controller: {}.\n",
        report::machine(),
        list(&first_eviction),
        list(
            &first_eviction
                .iter()
                .map(|d| d.saturating_sub(Duration::from_secs(cooldown)))
                .collect::<Vec<_>>()
        ),
        list(&all_back),
        list(
            &all_back
                .iter()
                .map(|d| d.saturating_sub(Duration::from_secs(cooldown)))
                .collect::<Vec<_>>()
        ),
        list(&spilled),
        list(
            &spilled
                .iter()
                .map(|d| d.saturating_sub(Duration::from_secs(after)))
                .collect::<Vec<_>>()
        ),
        evictions.map_or("none".into(), |e| e.to_string()),
    );
    report::write_section("controller-loop", &body)
}

/// Flags of `controller-scale`.
#[derive(Args)]
pub struct ScaleArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Pods bound to them.
    #[arg(long, default_value_t = 30_000)]
    pub pods: usize,
    /// Share of the pods that are opted in (labelled by a webhook; in the controller's store).
    #[arg(long, default_value_t = 0.1)]
    pub opted_in: f64,
}

async fn create_all<K, F>(api: &Api<K>, count: usize, make: F) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    F: Fn(usize) -> anyhow::Result<K>,
{
    let objects: Vec<K> = (0..count).map(&make).collect::<anyhow::Result<_>>()?;
    let mut results = futures::stream::iter(objects.into_iter().map(|object| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &object)
                .await
                .map(|_| ())
        }
    }))
    .buffer_unordered(32);
    while let Some(result) = results.next().await {
        result?;
    }
    Ok(())
}

/// Controller memory and pass time at 1,000 nodes and 30,000 pods.
pub async fn controller_scale(args: ScaleArgs) -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "bench-scale").await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let _cleanup = ScaleCleanup(ns.name.clone());
    let started = Instant::now();
    create_all(&nodes, args.nodes, |i| {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": format!("bench-node-{i}"),
                "labels": {"type": "bench", "kubernetes.io/hostname": format!("bench-node-{i}")}},
            "status": {"allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]}
        }))?)
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let opted_every = (1.0 / args.opted_in.max(1e-6)).round().max(1.0) as usize;
    let node_count = args.nodes;
    create_all(&pods, args.pods, |i| {
        let mut labels = json!({"app": format!("app-{}", i % 100)});
        if i % opted_every == 0 {
            labels["spillway.io/placement"] = json!("local");
        }
        Ok(serde_json::from_value(json!({
            "metadata": {"name": format!("p-{i}"), "labels": labels},
            // Bound by hand to nodes no kubelet runs: nothing starts, the objects are what count.
            "spec": {"nodeName": format!("bench-node-{}", i % node_count),
                "containers": [{"name": "app", "image": "nginx:1.27",
                    "env": [{"name": "MODE", "value": "bench"}],
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}
        }))?)
    })
    .await?;
    // A few opted-in Deployments so the passes have workloads to plan.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    for i in 0..20 {
        deployments
            .create(
                &PostParams::default(),
                &deployment(
                    &format!("web-{i}"),
                    0,
                    "100m",
                    json!({"spillway.io/burst": "true"}),
                )?,
            )
            .await?;
    }
    let setup = started.elapsed();

    // Baseline: the webhook keeps the same index, without the controller's pod store.
    let webhook = WebhookUnderTest::start("bench-scale-webhook", "").await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let webhook_rss = rss_kib(webhook.process.child.id()).unwrap_or(0);
    drop(webhook);

    let controller = ControllerUnderTest::start("bench-scale-controller", &ns.name, &[], &[])?;
    controller.wait_leading(Duration::from_secs(120)).await?;
    // Ten passes or more after the first.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let metrics = metrics_text(controller.admin_port)?;
    let passes = sample(
        &metrics,
        "spillway_controller_reconcile_duration_seconds_count",
    )
    .unwrap_or(0.0);
    let total = sample(
        &metrics,
        "spillway_controller_reconcile_duration_seconds_sum",
    )
    .unwrap_or(0.0);
    let controller_rss = rss_kib(controller.process.child.id()).unwrap_or(0);
    drop(controller);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let body = format!(
        "## Controller at scale (test bed{})\n\n\
         {}. {} nodes and {} pods (one in {} labelled as opted in, so in the controller's pod \
         store; every pod in the shared index), 20 opted-in Deployments; created in {:.0} s. \
         Binary: `{}`.\n\n\
         | | figure |\n|---|---|\n\
         | controller RSS after {:.0} passes | {:.1} MiB (target ≤ 150 MiB) |\n\
         | webhook RSS over the same cluster (baseline: the same index, no pod store) | {:.1} MiB |\n\
         | ratio controller / webhook | {:.2} |\n\
         | one full pass (index read lock, pod views, status, metrics, plan), mean | {:.2} ms |\n",
        if opted_every == 1 {
            ", every pod opted in"
        } else {
            ""
        },
        report::machine(),
        args.nodes,
        args.pods,
        opted_every,
        setup.as_secs_f64(),
        spillway_e2e::spillway_binary()?.display(),
        passes,
        mib(controller_rss),
        mib(webhook_rss),
        controller_rss as f64 / webhook_rss.max(1) as f64,
        if passes > 0.0 {
            total / passes * 1e3
        } else {
            0.0
        },
    );
    let section = if opted_every == 1 {
        "controller-scale-all-opted-in"
    } else {
        "controller-scale"
    };
    report::write_section(section, &body)
}

/// Removes the benchmark's pods and nodes on the way out: no kubelet confirms the
/// deletion of pods bound to the simulated nodes, so they are removed outright.
struct ScaleCleanup(String);

impl Drop for ScaleCleanup {
    fn drop(&mut self) {
        let _ = spillway_e2e::kubectl(&[
            "delete",
            "pods",
            "-n",
            &self.0,
            "--all",
            "--grace-period=0",
            "--force",
            "--wait=false",
        ]);
        let _ = spillway_e2e::kubectl(&["delete", "nodes", "-l", "type=bench", "--wait=false"]);
    }
}
