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
use spillway_e2e::{
    NodeCleanupGuard, SpillwayProcess, TestNamespace, WebhookRegistration, WebhookUnderTest,
    client, free_port, pod_on_node, register_webhook, testbed_env, vk_node_args, wait_until,
};

use crate::report;
use crate::stats::{Samples, ms, rss_kib};

fn bare_pod(name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"spillway.io/burst": "true"}},
        // Bound to a node that does not exist: nothing schedules or runs it, only the create is measured.
        "spec": {"nodeName": "bench-nowhere", "containers": [{"name": "app", "image": "nginx:1.27",
                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}
    }))?)
}

/// Pod-create latency with and without the webhook: 5 alternating rounds of 100 creates.
pub async fn pod_create() -> anyhow::Result<()> {
    let client = client().await?;
    let plain = TestNamespace::create(&client, "bench-plain").await?;
    let hooked = TestNamespace::create(&client, "bench-hook").await?;
    let trivial_ns = TestNamespace::create(&client, "bench-trivial").await?;
    let webhook = WebhookUnderTest::start("bench-webhook", "").await?;
    let _hook = register_webhook(
        &client,
        WebhookRegistration {
            name: &hooked.name,
            url: &webhook.url(),
            ca_pem: &webhook.ca_pem,
            namespace: &hooked.name,
            failure_policy: "Ignore",
        },
    )
    .await?;
    let trivial = crate::webhook::start("allow", 0, 0)?;
    let trivial_ca = std::fs::read_to_string(&trivial.ca)?;
    let _trivial_hook = register_webhook(
        &client,
        WebhookRegistration {
            name: &trivial_ns.name,
            url: &format!("https://127.0.0.1:{}/mutate", trivial.port),
            ca_pem: &trivial_ca,
            namespace: &trivial_ns.name,
            failure_policy: "Ignore",
        },
    )
    .await?;
    let trivial_api: Api<Pod> = Api::namespaced(client.clone(), &trivial_ns.name);
    let plain_api: Api<Pod> = Api::namespaced(client.clone(), &plain.name);
    let hook_api: Api<Pod> = Api::namespaced(client.clone(), &hooked.name);
    // Let the apiserver load the configuration, and check the webhook really answers.
    wait_until(
        "webhook in the admission chain",
        Duration::from_secs(30),
        || async {
            let pod = hook_api
                .create(
                    &PostParams::default(),
                    &bare_pod(&format!("probe-{}", free_port()?))?,
                )
                .await?;
            Ok(pod
                .metadata
                .labels
                .unwrap_or_default()
                .contains_key("spillway.io/placement"))
        },
    )
    .await?;
    let (mut without, mut with, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..5 {
        let mut order = [
            (&plain_api, &mut without, "p"),
            (&hook_api, &mut with, "h"),
            (&trivial_api, &mut floor, "t"),
        ];
        order.rotate_left(round % 3);
        for (api, samples, tag) in order {
            for i in 0..100 {
                let pod = bare_pod(&format!("{tag}-{round}-{i}"))?;
                let started = Instant::now();
                api.create(&PostParams::default(), &pod).await?;
                samples.push(started.elapsed());
            }
        }
    }
    let floor = Samples::new(floor);
    let (without, with) = (Samples::new(without), Samples::new(with));
    let ratio = with.mean().as_secs_f64() / without.mean().as_secs_f64();
    let body = format!(
        "## Pod-create latency with the webhook (`make bench`, spillway-bench pod-create)\n\n\
         Machine: {}. Test bed (kube-apiserver 1.37.2 on loopback); `spillway webhook` registered for one namespace \
         (failurePolicy Ignore, TLS); 500 sequential creates in each namespace, in 5 alternating rounds of 100; \
         opted-in bare pods bound to a node that does not exist, so only the create is measured.\n\n\
         | | without webhook | with webhook | ratio (target ≤ 1.10) |\n|---|---|---|---|\n\
         | mean | {} | {} | {ratio:.3} |\n| p50 | {} | {} | {:.3} |\n| p99 | {} | {} | |\n\n\
         The floor any webhook costs here, measured in the same rounds with a trivial webhook (same TLS server stack, \
         parses the review, allows with no patch): mean {} (ratio {:.3} to no webhook), p50 {}. Spillway's webhook against \
         that floor: mean ratio {:.3}.\n",
        report::machine(),
        ms(without.mean()),
        ms(with.mean()),
        ms(without.percentile(50.0)),
        ms(with.percentile(50.0)),
        with.percentile(50.0).as_secs_f64() / without.percentile(50.0).as_secs_f64(),
        ms(without.percentile(99.0)),
        ms(with.percentile(99.0)),
        ms(floor.mean()),
        floor.mean().as_secs_f64() / without.mean().as_secs_f64(),
        ms(floor.percentile(50.0)),
        with.mean().as_secs_f64() / floor.mean().as_secs_f64(),
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
    if provider == "mock" {
        args.extend(["--mock-start-latency-ms".into(), "0".into()]);
    } else {
        aws_env = testbed_env()?;
        let endpoint = aws_env["SPILLWAY_AWS_ENDPOINT"].clone();
        let cluster = ns.name.clone();
        let created = std::process::Command::new(spillway_e2e::repo_root().join("e2e/.venv/bin/python"))
            .args(["-c", &format!("import boto3; boto3.client('ecs', endpoint_url='{endpoint}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing').create_cluster(clusterName='{cluster}')")])
            .status()?;
        anyhow::ensure!(created.success(), "cannot create the ECS cluster in moto");
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
    wait_until("every pod Running", Duration::from_secs(900), || async {
        Ok(running.lock().unwrap_or_else(|p| p.into_inner()).len() >= pods)
    })
    .await?;
    let wall = started.elapsed();
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
    })
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
