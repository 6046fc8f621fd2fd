//! Benchmarks on the test bed (`e2e/testbed up` first): the webhook's share of pod-create
//! latency, and a virtual node taking 1,000 pods with the mock provider and with moto.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use spillway_e2e::fake_arm::{Behaviour, CallCounts, FakeArm};
use spillway_e2e::hostile_clients::HostileClients;
use spillway_e2e::{
    NodeCleanupGuard, RegisteredWebhook, SpillwayProcess, TestNamespace, WebhookRegistration,
    WebhookUnderTest, client, free_port, pod_on_node, register_webhook, testbed_env, vk_node_args,
    wait_until,
};

use crate::report;
use crate::stats::{Samples, ms, rss_kib, us};

fn bare_pod(name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        // A label map to add to: the patch floor's one op adds a key to it.
        "metadata": {"name": name, "labels": {"app": "bench"}, "annotations": {"spillway.io/burst": "true"}},
        // Bound to a node that does not exist: nothing schedules or runs it, only the create is measured.
        "spec": {"nodeName": "bench-nowhere", "containers": [{"name": "app", "image": "nginx:1.27",
                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}
    }))?)
}

/// The ways a pod-create is measured, in the same rounds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Series {
    /// No webhook for the namespace.
    NoWebhook,
    /// A trivial webhook (same TLS server stack): parses the review, allows, no patch.
    Floor,
    /// The trivial webhook answering with a one-op JSON patch.
    PatchFloor,
    /// The trivial webhook answering with a fixed patch shaped like Spillway's (two labels,
    /// one annotation): what the apiserver's share of Spillway's patch costs.
    ShapedFloor,
    /// `spillway webhook`.
    Spillway,
    /// `spillway webhook` while 900 idle connections and 50 slowloris clients hold it (below
    /// the per-source share of 1,024: on loopback the apiserver shares their address).
    SpillwayHostile,
}

const SERIES: [Series; 6] = [
    Series::NoWebhook,
    Series::Floor,
    Series::PatchFloor,
    Series::ShapedFloor,
    Series::Spillway,
    Series::SpillwayHostile,
];
const ROUNDS: usize = 20;
const CREATES_PER_ROUND: usize = 100;
/// Quiet time after the hostile clients connect and after they go.
const HOSTILE_SETTLE: Duration = Duration::from_secs(1);

/// A trivial webhook process registered for its own namespace.
async fn trivial_webhook(
    client: &kube::Client,
    mode: &str,
) -> anyhow::Result<(TestNamespace, crate::webhook::Server, RegisteredWebhook)> {
    let ns = TestNamespace::create(client, &format!("bench-{mode}")).await?;
    let server = crate::webhook::start(mode, 0, 0)?;
    let ca = std::fs::read_to_string(&server.ca)?;
    let hook = register_webhook(
        client,
        WebhookRegistration {
            name: &ns.name,
            url: &format!("https://127.0.0.1:{}/mutate", server.port),
            ca_pem: &ca,
            namespace: &ns.name,
            failure_policy: "Ignore",
        },
    )
    .await?;
    Ok((ns, server, hook))
}

/// A `spillway webhook` process registered for a namespace of its own.
async fn spillway_webhook(
    client: &kube::Client,
    name: &str,
) -> anyhow::Result<(TestNamespace, WebhookUnderTest, RegisteredWebhook)> {
    let ns = TestNamespace::create(client, name).await?;
    let webhook = WebhookUnderTest::start(name, "").await?;
    let hook = webhook.register_in(client, &ns.name).await?;
    Ok((ns, webhook, hook))
}

/// Waits until creates in `api` come back carrying `label` (the webhook is in the chain).
async fn wait_in_chain(api: &Api<Pod>, label: &str) -> anyhow::Result<()> {
    wait_until(
        &format!("webhook adding {label} in the admission chain"),
        Duration::from_secs(30),
        || async {
            let pod = api
                .create(
                    &PostParams::default(),
                    &bare_pod(&format!("probe-{}", free_port()?))?,
                )
                .await?;
            Ok(pod.metadata.labels.unwrap_or_default().contains_key(label))
        },
    )
    .await
}

/// Pod-create latency with no webhook, a trivial webhook with and without a patch, and
/// Spillway's webhook with and without hostile clients: the series' creates interleaved
/// (one of each in turn, the order rotating), so a slow moment of the test bed falls on
/// all of them alike.
pub async fn pod_create() -> anyhow::Result<()> {
    let client = client().await?;
    let plain = TestNamespace::create(&client, "bench-plain").await?;
    let (hooked, webhook, _hook) = spillway_webhook(&client, "bench-hook").await?;
    let (hostile_ns, hostile_webhook, _hostile_hook) =
        spillway_webhook(&client, "bench-hostile").await?;
    let (allow_ns, _allow, _allow_hook) = trivial_webhook(&client, "allow").await?;
    let (patch_ns, _patch, _patch_hook) = trivial_webhook(&client, "bare").await?;
    let (shaped_ns, _shaped, _shaped_hook) = trivial_webhook(&client, "shaped").await?;
    let api = |ns: &TestNamespace| Api::<Pod>::namespaced(client.clone(), &ns.name);
    let (plain_api, hook_api, hostile_api) = (api(&plain), api(&hooked), api(&hostile_ns));
    let (allow_api, patch_api, shaped_api) = (api(&allow_ns), api(&patch_ns), api(&shaped_ns));
    wait_in_chain(&hook_api, "spillway.io/placement").await?;
    wait_in_chain(&hostile_api, "spillway.io/placement").await?;
    wait_in_chain(&patch_api, "bench").await?;
    wait_in_chain(&shaped_api, "spillway.io/placement").await?;
    let mut samples: HashMap<u8, Vec<Duration>> = HashMap::new();
    let mut not_admitted_by_spillway = 0usize;
    for round in 0..ROUNDS {
        // The hostile clients hold the second Spillway webhook for the whole round.
        let hostile =
            HostileClients::open(hostile_webhook.port, &hostile_webhook.ca_pem, 900, 50).await?;
        // Measured is holding them, not the flood of their 1,050 handshakes: the server
        // finishes those (session tickets, connection tasks) first.
        tokio::time::sleep(HOSTILE_SETTLE).await;
        for i in 0..CREATES_PER_ROUND {
            let mut order = SERIES;
            order.rotate_left((round * CREATES_PER_ROUND + i) % SERIES.len());
            for series in order {
                let api = match series {
                    Series::NoWebhook => &plain_api,
                    Series::Floor => &allow_api,
                    Series::PatchFloor => &patch_api,
                    Series::ShapedFloor => &shaped_api,
                    Series::Spillway => &hook_api,
                    Series::SpillwayHostile => &hostile_api,
                };
                let pod = bare_pod(&format!("s{}-{round}-{i}", series as u8))?;
                let started = Instant::now();
                let created = api.create(&PostParams::default(), &pod).await?;
                samples
                    .entry(series as u8)
                    .or_default()
                    .push(started.elapsed());
                let labels = created.metadata.labels.unwrap_or_default();
                if matches!(series, Series::Spillway | Series::SpillwayHostile)
                    && !labels.contains_key("spillway.io/placement")
                {
                    not_admitted_by_spillway += 1;
                }
            }
        }
        // Their 1,050 closes must not land on the next round.
        drop(hostile);
        tokio::time::sleep(HOSTILE_SETTLE).await;
    }
    // Spillway's own time per review, from the review's bytes to its answer.
    let handler = spillway_e2e::metrics_text(webhook.admin_port)?;
    let handler_count = metric(&handler, "spillway_admission_duration_seconds_count", &[]);
    let handler_mean = Duration::from_secs_f64(
        metric(&handler, "spillway_admission_duration_seconds_sum", &[]) / handler_count.max(1.0),
    );
    // The pods are bound to a node that does not exist, so nothing would ever confirm a
    // graceful delete: remove them at once, or they stay Terminating in the test bed.
    let now = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        ..kube::api::DeleteParams::default()
    };
    for api in [
        &plain_api,
        &allow_api,
        &patch_api,
        &shaped_api,
        &hook_api,
        &hostile_api,
    ] {
        api.delete_collection(&now, &kube::api::ListParams::default())
            .await?;
    }
    let mut take =
        |series: Series| Samples::new(samples.remove(&(series as u8)).unwrap_or_default());
    let without = take(Series::NoWebhook);
    let floor = take(Series::Floor);
    let patch_floor = take(Series::PatchFloor);
    let shaped_floor = take(Series::ShapedFloor);
    let with = take(Series::Spillway);
    let hostile = take(Series::SpillwayHostile);
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    let row = |name: &str, s: &Samples| {
        format!(
            "| {name} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            ms(s.mean()),
            ms(s.percentile(50.0)),
            ms(s.percentile(99.0)),
            ratio(s.mean(), floor.mean()),
            ratio(s.percentile(99.0), floor.percentile(99.0)),
            ratio(s.mean(), shaped_floor.mean()),
            ratio(s.percentile(99.0), shaped_floor.percentile(99.0)),
        )
    };
    let body = format!(
        "## Pod-create latency with the webhook (`make bench`, spillway-bench pod-create)\n\n\
         Machine: {}. Test bed (kube-apiserver 1.37.2 on loopback); each webhook registered for its own namespace \
         (failurePolicy Ignore, TLS, reinvocationPolicy IfNeeded); {ROUNDS} rounds of {CREATES_PER_ROUND} creates \
         per series, interleaved (one create of each series in turn, the order rotating each time) so that a slow moment \
         of the test bed falls on every series alike; opted-in bare pods bound to a node that does not exist, so only the \
         create is measured. The *floor* is a trivial webhook on the same TLS server stack that parses the review and \
         allows with no patch; the *patch floor* is the same server answering a one-op JSON patch; the *shaped patch \
         floor* answers a fixed patch of the shape Spillway returns here (two labels, one annotation). The hostile series \
         is a second `spillway webhook` (its own namespace) while 900 idle TLS connections and 50 slowloris clients \
         (a header byte every 500 ms) are held open on it: opened before each round and closed after it, with {} s of \
         quiet on either side (their handshakes and closes are a connection flood, not the cost of holding them).\n\n\
         | series | mean | p50 | p99 | mean / floor | p99 / floor | mean / shaped floor | p99 / shaped floor |\n\
         |---|---|---|---|---|---|---|---|\n{}{}{}{}{}{}\n\
         Targets: Spillway ≤ 1.05× the floor for mean and p99 (issue 8): mean {:.3}, p99 {:.3}. Any patch costs the \
         apiserver work a no-patch webhook never causes (it applies the patch and decodes the changed pod again: the \
         patch floors' rows), and Spillway must label every opted-in pod it admits (DESIGN §2), so the webhook's own \
         share is its ratio to the shaped patch floor, a trivial webhook answering the same patch: mean {:.3}, p99 {:.3}. \
         Spillway's own time per review (its `spillway_admission_duration_seconds`, from the \
         review's bytes to its answer): mean {} over {handler_count} reviews. With hostile clients, p99 ≤ 1.2× \
         Spillway's own p99 without them: {:.3}. Creates Spillway did not answer \
         (no placement label): {not_admitted_by_spillway} of {}.\n",
        report::machine(),
        HOSTILE_SETTLE.as_secs(),
        row("no webhook", &without),
        row("floor: trivial webhook, no patch", &floor),
        row("patch floor: trivial webhook, one-op patch", &patch_floor),
        row(
            "shaped patch floor: trivial webhook, Spillway's 3-op patch",
            &shaped_floor
        ),
        row("Spillway", &with),
        row("Spillway, hostile clients held", &hostile),
        ratio(with.mean(), floor.mean()),
        ratio(with.percentile(99.0), floor.percentile(99.0)),
        ratio(with.mean(), shaped_floor.mean()),
        ratio(with.percentile(99.0), shaped_floor.percentile(99.0)),
        us(handler_mean),
        ratio(hostile.percentile(99.0), with.percentile(99.0)),
        with.len() + hostile.len(),
    );
    report::write_section("pod-create", &body)
}

/// Flags of `vk-node`.
#[derive(Args, Debug)]
pub struct VkNodeArgs {
    /// Pods to bind.
    #[arg(long, default_value_t = 1000)]
    pub pods: usize,
}

fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        + 0.0 // an empty f64 sum is -0.0
}

struct NodeRun {
    provider: &'static str,
    latencies: Samples,
    wall: Duration,
    run_task: f64,
    register: f64,
    describe_per_pod_interval: f64,
    rss_kib: u64,
    sync_interval: u64,
    /// The fake ARM server's call counts (the ACI run only): at all Running, and after
    /// the status-sync intervals measured.
    arm: Option<(CallCounts, CallCounts)>,
}

async fn run_node(provider: &'static str, pods: usize) -> anyhow::Result<NodeRun> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, &format!("bench-{provider}")).await?;
    let node_name = format!("spillway-{provider}-{}", ns.name);
    let _cleanup = NodeCleanupGuard(node_name.clone());
    let sync_interval = 5;
    let mut args = vk_node_args(&node_name, provider)?;
    let admin = args
        .iter()
        .position(|a| a == "--admin-addr")
        .map(|i| args[i + 1].clone())
        .expect("admin flag");
    let at = args
        .iter()
        .position(|a| a == "--sync-interval-seconds")
        .expect("sync flag");
    args[at + 1] = sync_interval.to_string();
    args.extend([
        "--max-pods".into(),
        (pods + 10).to_string(),
        "--max-vcpu".into(),
        "1000".into(),
        "--max-memory".into(),
        "4Ti".into(),
    ]);
    let mut env: Vec<(&str, &str)> = Vec::new();
    let aws_env;
    let token_dir = tempfile::tempdir()?;
    let mut arm = None;
    if provider == "mock" {
        args.extend(["--mock-start-latency-ms".into(), "0".into()]);
    } else if provider == "aci" {
        // Pages of 100, about what ARM returns for container groups.
        let behaviour = Behaviour {
            page_size: 100,
            ..Behaviour::default()
        };
        let fake = FakeArm::start(ARM_TOKEN, behaviour).await?;
        let token_file = token_dir.path().join("token");
        std::fs::write(&token_file, ARM_TOKEN)?;
        args.extend([
            "--aci-subscription-id".into(),
            "00000000-0000-0000-0000-00000000be0c".into(),
            "--aci-resource-group".into(),
            "spillway-bench".into(),
            "--arm-endpoint".into(),
            fake.url.clone(),
            "--azure-token-file".into(),
            token_file.display().to_string(),
            "--cluster-id".into(),
            ns.name.clone(),
        ]);
        arm = Some(fake);
    } else {
        aws_env = testbed_env()?;
        let endpoint = aws_env["SPILLWAY_AWS_ENDPOINT"].clone();
        let cluster = ns.name.clone();
        let created = std::process::Command::new(spillway_e2e::repo_root().join("e2e/.venv/bin/python"))
            .args(["-c", &format!("import boto3; aws = dict(endpoint_url='{endpoint}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing'); boto3.client('ecs', **aws).create_cluster(clusterName='{cluster}'); boto3.client('logs', **aws).create_log_group(logGroupName='/spillway/{cluster}')")])
            .status()?;
        anyhow::ensure!(
            created.success(),
            "cannot create the ECS cluster and log group in moto"
        );
        let log_group = format!("/spillway/{cluster}");
        args.extend(
            [
                "--ecs-cluster",
                &cluster,
                "--subnets",
                &aws_env["SPILLWAY_TESTBED_SUBNET"],
                "--security-groups",
                &aws_env["SPILLWAY_TESTBED_SECURITY_GROUP"],
                "--aws-endpoint",
                &endpoint,
                "--log-group",
                &log_group,
                "--execution-role-arn",
                "arn:aws:iam::123456789012:role/spillway-task-execution",
            ]
            .map(String::from),
        );
        env = vec![
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
        ];
    }
    let node = SpillwayProcess::start(&args, &format!("bench-{}", ns.name), &env)?;
    let pid = node.child.id();
    wait_until("node Ready", Duration::from_secs(60), || async {
        Ok(reqwest::get(format!("http://{admin}/readyz"))
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false))
    })
    .await?;

    let api: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let running: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = {
        let running = running.clone();
        let stream = watcher(api.clone(), watcher::Config::default());
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(Ok(event)) = stream.next().await {
                if let watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) = event
                    && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                {
                    running
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(pod.metadata.name.unwrap_or_default())
                        .or_insert_with(Instant::now);
                }
            }
        })
    };
    let started = Instant::now();
    futures::stream::iter(0..pods)
        .map(|i| {
            let (api, created, node_name) = (api.clone(), created.clone(), node_name.clone());
            async move {
                let name = format!("p{i}");
                let pod = pod_on_node(&name, &node_name, json!({}))?;
                api.create(&PostParams::default(), &pod).await?;
                created
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name, Instant::now());
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    // ACI's create quota alone spreads 300 pods over 10 minutes.
    wait_until("every pod Running", Duration::from_secs(1800), || async {
        Ok(running.lock().unwrap_or_else(|p| p.into_inner()).len() >= pods)
    })
    .await?;
    let wall = started.elapsed();
    let arm_at_running = arm.as_ref().map(FakeArm::counts);
    watch.abort();
    let latencies = {
        let created = created.lock().unwrap_or_else(|p| p.into_inner());
        let running = running.lock().unwrap_or_else(|p| p.into_inner());
        Samples::new(
            created
                .iter()
                .filter_map(|(name, t0)| {
                    running
                        .get(name)
                        .map(|t1| t1.saturating_duration_since(*t0))
                })
                .collect(),
        )
    };
    let scrape = || async {
        reqwest::get(format!("http://{admin}/metrics"))
            .await?
            .text()
            .await
    };
    let before = scrape().await?;
    let intervals = 3;
    tokio::time::sleep(Duration::from_secs(sync_interval * intervals)).await;
    let after = scrape().await?;
    let describe = |t: &str| {
        metric(
            t,
            "spillway_provider_requests_total",
            &["op=\"DescribeTasks\""],
        )
    };
    let statuses = |t: &str| metric(t, "spillway_provider_requests_total", &["op=\"statuses\""]);
    let per_interval = if provider == "mock" {
        (statuses(&after) - statuses(&before)) / pods as f64 / intervals as f64
    } else {
        (describe(&after) - describe(&before)) / pods as f64 / intervals as f64
    };
    Ok(NodeRun {
        provider,
        wall,
        run_task: metric(
            &after,
            "spillway_provider_requests_total",
            &["op=\"RunTask\""],
        ) / pods as f64,
        register: metric(
            &after,
            "spillway_provider_requests_total",
            &["op=\"RegisterTaskDefinition\""],
        ),
        describe_per_pod_interval: per_interval,
        rss_kib: rss_kib(pid).unwrap_or(0),
        latencies,
        sync_interval,
        arm: arm_at_running.zip(arm.as_ref().map(FakeArm::counts)),
    })
}

const ARM_TOKEN: &str = "bench-arm-token";

/// Flags of `aci-node`.
#[derive(Args, Debug)]
pub struct AciNodeArgs {
    /// Pods to bind.
    #[arg(long, default_value_t = 300)]
    pub pods: usize,
}

/// An ACI node taking a burst of pods through the fake ARM server under the default
/// create quota (100 at once, then one every 3 s).
pub async fn aci_node(args: AciNodeArgs) -> anyhow::Result<()> {
    let run = run_node("aci", args.pods).await?;
    let (at_running, after) = run.arm.clone().unwrap_or_default();
    let pods = args.pods as f64;
    let intervals = 3.0;
    let body = format!(
        "## ACI virtual node, {} pods (`make bench`, spillway-bench aci-node)\n\n\
         Machine: {}. Test bed; the node talks to the fake ARM server (`e2e/src/fake_arm.rs`: spec-checked PUTs, \
         `201` + `Azure-AsyncOperation`, groups Running 0.5 s after their PUT, list pages of 100). Pods created 16 at a \
         time already bound to the node; default create quota (100 per 300 s: 100 at once, then one every 3 s), so \
         the floor for all Running is (pods − 100) × 3 s. Status sync every {} s. Targets: 1 PUT per pod, no pod \
         Failed, RSS ≤ 256 MiB.\n\n\
         | pods | all Running after | floor from the quota | bind→Running p50 | p99 | PUTs per pod | GETs per pod | operation polls per pod | list pages per sync interval | node RSS |\n\
         |---|---|---|---|---|---|---|---|---|---|\n\
         | {} | {:.1} s | {:.0} s | {} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.0} MiB |\n",
        args.pods,
        report::machine(),
        run.sync_interval,
        run.latencies.len(),
        run.wall.as_secs_f64(),
        (pods - 100.0).max(0.0) * 3.0,
        ms(run.latencies.percentile(50.0)),
        ms(run.latencies.percentile(99.0)),
        at_running.puts as f64 / pods,
        at_running.gets as f64 / pods,
        at_running.polls as f64 / pods,
        (after.lists - at_running.lists) as f64 / intervals,
        run.rss_kib as f64 / 1024.0,
    );
    report::write_section("aci-node", &body)
}

/// Virtual-node throughput and cost of bookkeeping.
pub async fn vk_node(args: VkNodeArgs) -> anyhow::Result<()> {
    let mock = run_node("mock", args.pods).await?;
    let fargate = run_node("fargate", args.pods).await?;
    let row = |r: &NodeRun| {
        let (run_task, register) = if r.provider == "mock" {
            ("n/a".to_owned(), "n/a".to_owned())
        } else {
            (format!("{:.2}", r.run_task), format!("{:.0}", r.register))
        };
        format!(
            "| {} | {} | {:.1} s | {} | {} | {run_task} | {register} | {:.4} | {:.0} MiB |",
            r.provider,
            r.latencies.len(),
            r.wall.as_secs_f64(),
            ms(r.latencies.percentile(50.0)),
            ms(r.latencies.percentile(99.0)),
            r.describe_per_pod_interval,
            r.rss_kib as f64 / 1024.0
        )
    };
    let body = format!(
        "## Virtual node, {} pods (`make bench`, spillway-bench vk-node)\n\n\
         Machine: {}. Test bed; pods created 16 at a time already bound to the node (identical spec); latency is from \
         the create call returning to the pod being seen Running through a watch. Status sync every {} s. For the mock \
         the status column counts the node's batched status calls; for moto it counts ECS DescribeTasks calls. \
         Targets: ≤ 1 RunTask per pod, ≤ 0.01 DescribeTasks per pod per sync interval, no RegisterTaskDefinition \
         beyond the first for identical pods (0 when moto already holds that definition from an earlier run: the node \
         checks with DescribeTaskDefinition first), RSS ≤ 256 MiB. RunTask is rate-limited to 15/s, below ECS's 20/s \
         quota, which bounds how fast 1,000 Fargate pods can start.\n\n\
         | provider | pods | all Running after | bind→Running p50 | p99 | RunTask per pod | RegisterTaskDefinition calls | status calls per pod per interval | node RSS |\n\
         |---|---|---|---|---|---|---|---|---|\n{}\n{}\n",
        args.pods,
        report::machine(),
        mock.sync_interval,
        row(&mock),
        row(&fargate),
    );
    report::write_section("vk-node", &body)
}
