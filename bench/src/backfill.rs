//! `backfill-bridge` (test bed with Karpenter, `e2e/testbed up --karpenter`): a sustained
//! step of load on a full cluster, once with backfill on and once with it off, in the same
//! invocation. For each: the time from the first burst replica Running to zero burst
//! replicas, and the burst USD spent over a fixed window (`spillway_burst_usd_total`).
//! Target with backfill: zero burst within node start delay + `backfill.afterSeconds` + one
//! rebalance cooldown + 30 s; the point is the USD ratio on/off.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use spillway_e2e::{
    RunUnderTest, TestNamespace, client, deployment, regular_nodes_idle, scale, testbed_env,
    wait_until,
};

use crate::report;

const APP: &str = "bridge";
/// How long each run is watched; the USD figures cover exactly this much of the load.
const WINDOW: Duration = Duration::from_secs(180);
/// `backfill.afterSeconds` of the run with backfill.
const AFTER_SECONDS: u64 = 10;
/// `rebalance.cooldownSeconds` of both runs.
const COOLDOWN_SECONDS: u64 = 30;

/// What one run measured.
struct Run {
    /// First burst replica Running → zero burst replicas (None: not within the window).
    to_zero_burst: Option<Duration>,
    /// USD spent on burst pods during the window.
    usd: f64,
    /// Nodes Karpenter added.
    nodes_added: usize,
}

/// Pods of 3 of the fixed nodes' 4 cores that tolerate Karpenter's tainted pool.
fn bridge(replicas: i32) -> anyhow::Result<Deployment> {
    let mut bridge = deployment(APP, replicas, "3", json!({"spillway.io/burst": "true"}))?;
    let pod = bridge.spec.template.spec.as_mut().expect("a pod template");
    pod.tolerations = Some(vec![serde_json::from_value(json!({
        "key": "spillway.io/testbed-pool", "operator": "Equal",
        "value": "karpenter", "effect": "NoSchedule"
    }))?]);
    Ok(bridge)
}

async fn burst_count(pods: &Api<Pod>, node: &str) -> anyhow::Result<usize> {
    Ok(pods
        .list(&ListParams::default().labels(&format!("app={APP}")))
        .await?
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
        })
        .count())
}

async fn karpenter_nodes(client: &kube::Client) -> anyhow::Result<usize> {
    Ok(Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels("spillway.io/testbed-pool=karpenter"))
        .await?
        .items
        .len())
}

/// The workload's `spillway_burst_usd_total`, summed over providers.
fn usd_spent(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("spillway_burst_usd_total{"))
        .filter(|l| l.contains(&format!("workload=\"{APP}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn one_run(backfill: bool) -> anyhow::Result<Run> {
    let client = client().await?;
    wait_until(
        "Karpenter's pool empty",
        Duration::from_secs(300),
        || async { Ok(karpenter_nodes(&client).await? == 0) },
    )
    .await?;
    regular_nodes_idle(&client, Duration::from_secs(120)).await?;
    let ns = TestNamespace::create(
        &client,
        if backfill {
            "bench-bf-on"
        } else {
            "bench-bf-off"
        },
    )
    .await?;
    let mode = if backfill { "auto" } else { "\"off\"" };
    let config = format!(
        "rebalance:\n  cooldownSeconds: {COOLDOWN_SECONDS}\n  maxEvictionsPerMinute: 30\npendingSpill:\n  afterSeconds: 3600\nbackfill:\n  mode: {mode}\n  afterSeconds: {AFTER_SECONDS}\n  placeholderImage: spillway:bench\n"
    );
    let run = RunUnderTest::start(&ns.name, &ns.name, &config).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    deployments
        .create(&PostParams::default(), &bridge(3)?)
        .await?;
    wait_until(
        "3 replicas on the fixed nodes",
        Duration::from_secs(60),
        || async {
            Ok(pods
                .list(&ListParams::default().labels(&format!("app={APP}")))
                .await?
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count()
                == 3)
        },
    )
    .await?;
    // The step: two replicas more than the fixed nodes hold, and it stays.
    scale(&deployments, APP, 5).await?;
    wait_until("2 replicas burst", Duration::from_secs(60), || async {
        Ok(burst_count(&pods, &run.node_name).await? == 2)
    })
    .await?;
    let first_burst = Instant::now();
    let usd_at_start = usd_spent(&run.metrics()?);
    let mut to_zero_burst = None;
    while first_burst.elapsed() < WINDOW {
        if to_zero_burst.is_none() && burst_count(&pods, &run.node_name).await? == 0 {
            to_zero_burst = Some(first_burst.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let usd = usd_spent(&run.metrics()?) - usd_at_start;
    let nodes_added = karpenter_nodes(&client).await?;
    scale(&deployments, APP, 0).await?;
    Ok(Run {
        to_zero_burst,
        usd,
        nodes_added,
    })
}

/// Both runs, then the report.
pub async fn backfill_bridge() -> anyhow::Result<()> {
    let env = testbed_env()?;
    anyhow::ensure!(
        env.get("SPILLWAY_TESTBED_KARPENTER").map(String::as_str) == Some("1"),
        "the test bed runs no Karpenter: start it with e2e/testbed up --karpenter"
    );
    let delay = env
        .get("SPILLWAY_TESTBED_KARPENTER_NODE_DELAY")
        .cloned()
        .unwrap_or_default();
    let delay_seconds: u64 = delay.trim_end_matches('s').parse().unwrap_or(0);
    let on = one_run(true).await?;
    let off = one_run(false).await?;
    let target = delay_seconds + AFTER_SECONDS + COOLDOWN_SECONDS + 30;
    let zero = |run: &Run| match run.to_zero_burst {
        Some(d) => format!("{:.1} s", d.as_secs_f64()),
        None => format!("not within {} s", WINDOW.as_secs()),
    };
    let ratio = if off.usd > 0.0 {
        on.usd / off.usd
    } else {
        f64::NAN
    };
    let body = format!(
        "## Burst as a bridge: sustained step with Karpenter (`make bench`, spillway-bench backfill-bridge)\n\n\
         {machine}; {build} build of spillway. Test bed with Karpenter (kwok provider, node registration delay {delay}); 3 fixed\n\
         nodes of 4 CPU hold 3 replicas of 3 CPU; the step to 5 replicas bursts 2 (mock provider\n\
         advertised as Fargate: 3 vCPU / 128 MiB, priced as a 4 vCPU / 8 GiB task). Each run watches\n\
         {window} s from the first burst replica Running; rebalance cooldown {COOLDOWN_SECONDS} s in both;\n\
         backfill `auto` (a CapacityBuffer here), afterSeconds {AFTER_SECONDS} s.\n\n\
         | run | first burst → zero burst | burst USD over the window | Karpenter nodes |\n\
         |---|---|---|---|\n\
         | backfill on | {on_zero} | {on_usd:.5} | {on_nodes} |\n\
         | backfill off | {off_zero} | {off_usd:.5} | {off_nodes} |\n\n\
         Target with backfill: zero burst within node delay + afterSeconds + one cooldown + 30 s =\n\
         {target} s. USD ratio on/off over the same window: {ratio:.3}. Without backfill the fixed\n\
         nodes stay full, so the utilization rule never brings the replicas home and nobody asks\n\
         Karpenter for a node: they stay on the virtual node for as long as the load stays.\n",
        machine = report::machine(),
        build = if std::env::var("SPILLWAY_BIN").is_ok_and(|b| b.contains("/release/")) {
            "release"
        } else {
            "debug"
        },
        window = WINDOW.as_secs(),
        on_zero = zero(&on),
        off_zero = zero(&off),
        on_usd = on.usd,
        off_usd = off.usd,
        on_nodes = on.nodes_added,
        off_nodes = off.nodes_added,
    );
    report::write_section("backfill-bridge", &body)
}
