//! `spillway vk-node --vk-provider fargate` against moto's ECS: pods run as tasks and get
//! the task's IP, `kubectl logs` reads CloudWatch Logs, deleting a pod stops its task,
//! Secret-derived env never reaches ECS in plain text, and a node killed while creating
//! 50 pods leaves, after a restart, exactly one task per pod and no orphan.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_ecs::types::DesiredStatus;
use base64::Engine;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use spillway_e2e::{
    LogFollower, NodeFixture, SpillwayProcess, kubectl, pod_on_node, testbed_env, vk_node_args,
    wait_running, wait_until,
};

struct Aws {
    ecs: aws_sdk_ecs::Client,
    logs: aws_sdk_cloudwatchlogs::Client,
    cloudwatch: aws_sdk_cloudwatch::Client,
    endpoint: String,
    subnet: String,
    security_group: String,
}

async fn aws() -> anyhow::Result<Aws> {
    let env = testbed_env()?;
    let endpoint = env["SPILLWAY_AWS_ENDPOINT"].clone();
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .credentials_provider(aws_sdk_ecs::config::Credentials::new(
            "testing", "testing", None, None, "e2e",
        ))
        .load()
        .await;
    Ok(Aws {
        ecs: aws_sdk_ecs::Client::new(&config),
        logs: aws_sdk_cloudwatchlogs::Client::new(&config),
        cloudwatch: aws_sdk_cloudwatch::Client::new(&config),
        endpoint,
        subnet: env["SPILLWAY_TESTBED_SUBNET"].clone(),
        security_group: env["SPILLWAY_TESTBED_SECURITY_GROUP"].clone(),
    })
}

fn fargate_node(aws: &Aws, node: &str, cluster: &str) -> anyhow::Result<Vec<String>> {
    let mut args = vk_node_args(node, "fargate")?;
    args.extend(
        [
            "--ecs-cluster",
            cluster,
            "--subnets",
            &aws.subnet,
            "--security-groups",
            &aws.security_group,
            "--aws-endpoint",
            &aws.endpoint,
            "--log-group",
            &format!("/spillway/{cluster}"),
            "--execution-role-arn",
            "arn:aws:iam::123456789012:role/spillway-task-execution",
        ]
        .map(String::from),
    );
    Ok(args)
}

const AWS_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
];

/// A namespace, an ECS cluster and log group named after it in moto, and the flags of a
/// Fargate node for them.
struct FargateFixture {
    node: NodeFixture,
    aws: Aws,
    cluster: String,
    args: Vec<String>,
}

impl FargateFixture {
    async fn new(prefix: &str) -> anyhow::Result<Self> {
        let node = NodeFixture::new(prefix, "fargate").await?;
        let aws = aws().await?;
        let cluster = node.ns.name.clone();
        aws.ecs
            .create_cluster()
            .cluster_name(&cluster)
            .send()
            .await?;
        aws.logs
            .create_log_group()
            .log_group_name(format!("/spillway/{cluster}"))
            .send()
            .await?;
        let args = fargate_node(&aws, &node.node_name, &cluster)?;
        Ok(Self {
            node,
            aws,
            cluster,
            args,
        })
    }

    fn start_node(&self) -> anyhow::Result<SpillwayProcess> {
        SpillwayProcess::start(&self.args, &format!("vk-{}", self.node.ns.name), &AWS_ENV)
    }
}

/// Running tasks of `cluster` by pod UID tag.
async fn running_tasks(
    aws: &Aws,
    cluster: &str,
) -> anyhow::Result<HashMap<String, Vec<aws_sdk_ecs::types::Task>>> {
    let arns = aws
        .ecs
        .list_tasks()
        .cluster(cluster)
        .desired_status(DesiredStatus::Running)
        .send()
        .await?
        .task_arns()
        .to_vec();
    let mut by_pod: HashMap<String, Vec<aws_sdk_ecs::types::Task>> = HashMap::new();
    for chunk in arns.chunks(100) {
        let described = aws
            .ecs
            .describe_tasks()
            .cluster(cluster)
            .set_tasks(Some(chunk.to_vec()))
            .include(aws_sdk_ecs::types::TaskField::Tags)
            .send()
            .await?;
        for task in described.tasks() {
            if task.last_status() != Some("RUNNING") {
                continue;
            }
            let uid = task
                .tags()
                .iter()
                .find(|t| t.key() == Some("spillway.io/pod-uid"))
                .and_then(|t| t.value())
                .unwrap_or("untagged");
            by_pod.entry(uid.to_owned()).or_default().push(task.clone());
        }
    }
    Ok(by_pod)
}

fn moto_recording(endpoint: &str) -> anyhow::Result<String> {
    let output = std::process::Command::new("curl")
        .args([
            "-sf",
            &format!("{endpoint}/moto-api/recorder/download-recording"),
        ])
        .output()?;
    anyhow::ensure!(output.status.success(), "cannot download moto's recording");
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Publishes a Container Insights datapoint for one container of `task`, as ECS would.
async fn put_container_insight(
    aws: &Aws,
    cluster: &str,
    task: &aws_sdk_ecs::types::Task,
    container: &str,
    metric: &str,
    value: f64,
) -> anyhow::Result<()> {
    use aws_sdk_cloudwatch::types::{Dimension, MetricDatum};
    let family = task
        .task_definition_arn()
        .and_then(|arn| arn.rsplit_once("task-definition/"))
        .and_then(|(_, tail)| tail.rsplit_once(':'))
        .map(|(family, _)| family.to_owned())
        .unwrap_or_default();
    let task_id = task
        .task_arn()
        .unwrap_or_default()
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let dimension = |name: &str, value: &str| Dimension::builder().name(name).value(value).build();
    aws.cloudwatch
        .put_metric_data()
        .namespace("ECS/ContainerInsights")
        .metric_data(
            MetricDatum::builder()
                .metric_name(metric)
                .dimensions(dimension("ClusterName", cluster))
                .dimensions(dimension("TaskDefinitionFamily", &family))
                .dimensions(dimension("TaskId", task_id))
                .dimensions(dimension("ContainerName", container))
                .timestamp(aws_sdk_cloudwatch::primitives::DateTime::from(
                    std::time::SystemTime::now(),
                ))
                .value(value)
                .build(),
        )
        .send()
        .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn fargate_pods_report_container_insights_usage_on_the_kubelet_api() -> anyhow::Result<()> {
    let mut fx = FargateFixture::new("e2e-insights").await?;
    fx.args
        .extend(["--usage-cache-seconds", "0"].map(String::from));
    let kubelet = fx.args[fx
        .args
        .iter()
        .position(|a| a == "--kubelet-listen")
        .unwrap()
        + 1]
    .clone();
    let (client, aws, cluster) = (&fx.node.client, &fx.aws, &fx.cluster);
    let (ns, node_name) = (&fx.node.ns, &fx.node.node_name);
    let _node = fx.start_node()?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    for name in ["measured", "fresh"] {
        pods.create(
            &PostParams::default(),
            &pod_on_node(name, node_name, json!({}))?,
        )
        .await?;
    }
    wait_until("both Running", Duration::from_secs(60), || async {
        let mut running = 0;
        for name in ["measured", "fresh"] {
            if pods
                .get(name)
                .await?
                .status
                .and_then(|s| s.phase)
                .as_deref()
                == Some("Running")
            {
                running += 1;
            }
        }
        Ok(running == 2)
    })
    .await?;
    let uid = pods.get("measured").await?.metadata.uid.unwrap_or_default();
    let tasks = running_tasks(aws, cluster).await?;
    let task = &tasks[&uid][0];
    // A quarter vCPU (256 CPU units) and 128 MiB; "fresh" has no datapoints yet.
    put_container_insight(aws, cluster, task, "app", "CpuUtilized", 256.0).await?;
    put_container_insight(aws, cluster, task, "app", "MemoryUtilized", 128.0).await?;

    let pki = spillway_e2e::run_dir().join("pki");
    let mut identity = std::fs::read(pki.join("apiserver-kubelet-client.crt"))?;
    identity.extend(std::fs::read(pki.join("apiserver-kubelet-client.key"))?);
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(
            pki.join("ca.crt"),
        )?)?)
        .identity(reqwest::Identity::from_pem(&identity)?)
        .build()?;
    let summary: serde_json::Value = http
        .get(format!("https://{kubelet}/stats/summary"))
        .send()
        .await?
        .json()
        .await?;
    let stats = summary["pods"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        stats.len(),
        1,
        "a pod without datapoints is left out: {summary}"
    );
    assert_eq!(stats[0]["podRef"]["uid"], uid.as_str());
    assert_eq!(stats[0]["cpu"]["usageNanoCores"], 250_000_000u64);
    assert_eq!(stats[0]["memory"]["workingSetBytes"], 128u64 << 20);
    let text = http
        .get(format!("https://{kubelet}/metrics/resource"))
        .send()
        .await?
        .text()
        .await?;
    let line = format!(
        "container_memory_working_set_bytes{{container=\"app\",namespace=\"{}\",pod=\"measured\"}} 134217728 ",
        ns.name
    );
    assert!(text.contains(&line), "{text}");

    // The same numbers reach kubectl top through metrics-server.
    wait_until(
        "kubectl top lists measured at 250m",
        Duration::from_secs(90),
        || async {
            let top = kubectl(&["top", "pod", "-n", &ns.name, "--no-headers"]).unwrap_or_default();
            Ok(top
                .lines()
                .any(|l| l.starts_with("measured") && l.contains(" 250m ") && l.contains("128Mi")))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn fargate_pods_run_as_tasks_log_and_stop() -> anyhow::Result<()> {
    let mut fx = FargateFixture::new("e2e-fargate").await?;
    // ECS Exec on: RunTask must ask for it (and the task role it needs is given).
    fx.args.extend(
        [
            "--enable-exec",
            "--task-role-arn",
            "arn:aws:iam::123456789012:role/spillway-task",
        ]
        .map(String::from),
    );
    let (client, aws, cluster) = (&fx.node.client, &fx.aws, &fx.cluster);
    let (ns, node_name) = (&fx.node.ns, &fx.node.node_name);
    let _node = fx.start_node()?;

    let secret_value = format!("s3cr3t-{}", ns.name);
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "db"}, "stringData": {"password": secret_value}}),
    )?;
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await?;
    let env = json!({"containers": [{"name": "app", "image": "nginx:1.27",
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
        "env": [{"name": "MODE", "value": "prod"},
                {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]}]});
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod_on_node("web", node_name, env)?)
        .await?;

    wait_until(
        "web Running with its task's IP",
        Duration::from_secs(60),
        || async {
            let status = pods.get("web").await?.status.unwrap_or_default();
            Ok(status.phase.as_deref() == Some("Running") && status.pod_ip.is_some())
        },
    )
    .await?;
    let uid = pods.get("web").await?.metadata.uid.unwrap_or_default();
    let tasks = running_tasks(aws, cluster).await?;
    assert_eq!(
        tasks.get(&uid).map(Vec::len),
        Some(1),
        "exactly one task for the pod"
    );
    let task = &tasks[&uid][0];
    let task_ip = task
        .attachments()
        .iter()
        .flat_map(|a| a.details())
        .find(|d| d.name() == Some("privateIPv4Address"))
        .and_then(|d| d.value())
        .map(str::to_owned);
    assert_eq!(
        pods.get("web").await?.status.unwrap_or_default().pod_ip,
        task_ip
    );

    // Logs: what the container wrote to CloudWatch Logs comes back through kubectl logs.
    let task_id = task
        .task_arn()
        .unwrap_or_default()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let stream = format!("spillway/app/{task_id}");
    let group = format!("/spillway/{cluster}");
    aws.logs
        .create_log_stream()
        .log_group_name(&group)
        .log_stream_name(&stream)
        .send()
        .await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let mut put = aws
        .logs
        .put_log_events()
        .log_group_name(&group)
        .log_stream_name(&stream);
    for (i, line) in ["listening on :80", "GET / 200", "GET /healthz 200"]
        .iter()
        .enumerate()
    {
        put = put.log_events(
            aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                .timestamp(now + i as i64)
                .message(*line)
                .build()?,
        );
    }
    put.send().await?;
    let logs = kubectl(&["logs", "-n", &ns.name, "web"])?;
    assert_eq!(logs, "listening on :80\nGET / 200\nGET /healthz 200\n");
    let tail = kubectl(&["logs", "-n", &ns.name, "web", "--tail=1"])?;
    assert_eq!(tail, "GET /healthz 200\n");
    let limited = kubectl(&["logs", "-n", &ns.name, "web", "--limit-bytes=9"])?;
    assert_eq!(limited, "listening");
    let stamped = kubectl(&["logs", "-n", &ns.name, "web", "--timestamps", "--since=1h"])?;
    let first = stamped.lines().next().unwrap_or_default();
    assert!(
        first.ends_with("Z listening on :80") && first.starts_with("20"),
        "{stamped}"
    );

    // follow: lines written after the stream opened arrive while it stays open.
    let follower = LogFollower::start(&ns.name, "web", 4)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    aws.logs
        .put_log_events()
        .log_group_name(&group)
        .log_stream_name(&stream)
        .log_events(
            aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                .timestamp(later)
                .message("GET /late 200")
                .build()?,
        )
        .send()
        .await?;
    let lines = follower.lines(Duration::from_secs(20)).await?;
    assert_eq!(
        lines.last().map(String::as_str),
        Some("GET /late 200"),
        "{lines:?}"
    );

    // The secret value reached Secrets Manager only: no ECS request body carries it.
    let recording = moto_recording(&aws.endpoint)?;
    let (mut ecs_requests, mut secret_references, mut secrets_manager_copies) = (0, 0, 0);
    let mut run_tasks = 0;
    // One JSON record after another; under concurrent requests moto may write two on
    // one line, so the records are read as a stream, not line by line.
    for record in serde_json::Deserializer::from_str(&recording).into_iter::<serde_json::Value>() {
        let record = record?;
        let target = record["headers"]["X-Amz-Target"].as_str().unwrap_or("");
        let body = record["body"].as_str().unwrap_or("");
        // moto records bodies base64-encoded.
        let body = String::from_utf8_lossy(
            &base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap_or_default(),
        )
        .into_owned();
        if target.starts_with("AmazonEC2ContainerServiceV20141113.") {
            ecs_requests += 1;
            assert!(
                !body.contains(&secret_value),
                "secret value in an ECS request ({target}): {body}"
            );
            // This test's tasks only (the recording holds every test's requests).
            if target.ends_with("RunTask") && body.contains(cluster.as_str()) {
                run_tasks += 1;
                assert!(body.contains("\"enableExecuteCommand\":true"), "{body}");
            }
            if target.ends_with("RegisterTaskDefinition") && body.contains(&format!("/{uid}")) {
                assert!(
                    body.contains("\"secrets\"") && body.contains("valueFrom"),
                    "{body}"
                );
                secret_references += 1;
            }
        }
        if target.starts_with("secretsmanager.") && body.contains(&secret_value) {
            secrets_manager_copies += 1;
        }
    }
    assert!(ecs_requests > 0, "the recording holds the ECS requests");
    assert!(run_tasks > 0, "the recording holds the RunTask");
    assert_eq!(
        secret_references, 1,
        "one task definition references the pod's secret"
    );
    assert_eq!(
        secrets_manager_copies, 1,
        "the value went to Secrets Manager, once"
    );

    pods.delete("web", &DeleteParams::default()).await?;
    wait_until(
        "web removed and its task stopped",
        Duration::from_secs(60),
        || async {
            let gone = pods.get_opt("web").await?.is_none();
            Ok(gone && !running_tasks(aws, cluster).await?.contains_key(&uid))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn node_killed_mid_creation_leaves_one_task_per_pod_and_no_orphan() -> anyhow::Result<()> {
    let fx = FargateFixture::new("e2e-crash").await?;
    let (client, aws, cluster) = (&fx.node.client, &fx.aws, &fx.cluster);
    let (ns, node_name) = (&fx.node.ns, &fx.node.node_name);
    let mut node = fx.start_node()?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let creates = (0..50).map(|i| {
        let pods = pods.clone();
        let node_name = node_name.clone();
        async move {
            pods.create(
                &PostParams::default(),
                &pod_on_node(&format!("p{i}"), &node_name, json!({}))?,
            )
            .await
            .map_err(anyhow::Error::from)
        }
    });
    for result in futures::future::join_all(creates).await {
        result?;
    }
    wait_until(
        "the node to be part-way through creating tasks",
        Duration::from_secs(60),
        || async {
            Ok(running_tasks(aws, cluster)
                .await?
                .values()
                .map(Vec::len)
                .sum::<usize>()
                >= 5)
        },
    )
    .await?;
    node.kill()?;
    let started_before_crash: usize = running_tasks(aws, cluster)
        .await?
        .values()
        .map(Vec::len)
        .sum();

    // While the node is down, five pods go away for good: their tasks become orphans.
    let force = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    let mut removed = Vec::new();
    for i in 0..5 {
        let pod = pods.get(&format!("p{i}")).await?;
        removed.push(pod.metadata.uid.unwrap_or_default());
        pods.delete(&format!("p{i}"), &force).await?;
    }

    let _node = fx.start_node()?;
    wait_until(
        "45 pods Running after the restart",
        Duration::from_secs(120),
        || async {
            let list = pods.list(&ListParams::default()).await?;
            let running = list
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count();
            Ok(list.items.len() == 45 && running == 45)
        },
    )
    .await?;
    let live = pods.list(&ListParams::default()).await?;
    wait_until(
        "exactly one task per live pod, none for removed ones",
        Duration::from_secs(30),
        || async {
            let tasks = running_tasks(aws, cluster).await?;
            let one_each = live.items.iter().all(|p| {
                tasks
                    .get(p.metadata.uid.as_deref().unwrap_or(""))
                    .map(Vec::len)
                    == Some(1)
            });
            let no_orphans = tasks.len() == live.items.len()
                && removed.iter().all(|uid| !tasks.contains_key(uid));
            Ok(one_each && no_orphans)
        },
    )
    .await?;
    assert!(
        started_before_crash < 50,
        "the crash came mid-creation ({started_before_crash} tasks started)"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn pod_the_provider_refuses_ends_failed_with_a_reason() -> anyhow::Result<()> {
    let fx = FargateFixture::new("e2e-refused").await?;
    let (client, aws, cluster) = (&fx.node.client, &fx.aws, &fx.cluster);
    let (ns, node_name) = (&fx.node.ns, &fx.node.node_name);
    // ECS refuses every RunTask as invalid: a request that can never succeed.
    let proxy = spillway_e2e::aws_fault_proxy::AwsFaultProxy::start(&fx.aws.endpoint).await?;
    proxy.fail_next(
        "RunTask",
        1000,
        spillway_e2e::aws_fault_proxy::Fault::Refuse,
    );
    let args = node_args_via(&fx, &proxy.endpoint(), &[]);
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &AWS_ENV)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &pod_on_node("broken", node_name, json!({}))?,
    )
    .await?;
    wait_until(
        "the pod marked Failed by the node",
        Duration::from_secs(60),
        || async {
            let status = pods.get("broken").await?.status.unwrap_or_default();
            Ok(status.phase.as_deref() == Some("Failed")
                && status.reason.as_deref() == Some("ProviderFailed"))
        },
    )
    .await?;
    let message = pods
        .get("broken")
        .await?
        .status
        .and_then(|s| s.message)
        .unwrap_or_default();
    assert!(message.contains("ClientException"), "{message}");
    assert!(
        running_tasks(aws, cluster).await?.is_empty(),
        "no task was started"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn a_runtask_capacity_failure_marks_the_pod_refused_not_failed() -> anyhow::Result<()> {
    let fx = FargateFixture::new("e2e-capacity").await?;
    let (client, aws, cluster) = (&fx.node.client, &fx.aws, &fx.cluster);
    let (ns, node_name) = (&fx.node.ns, &fx.node.node_name);
    // Fargate has no capacity until the test says so: the pod waits, says so on its
    // ProviderRefused condition (what the controller fails over by), and runs once
    // capacity returns.
    let proxy = spillway_e2e::aws_fault_proxy::AwsFaultProxy::start(&fx.aws.endpoint).await?;
    proxy.fail_next(
        "RunTask",
        100_000,
        spillway_e2e::aws_fault_proxy::Fault::Capacity,
    );
    let args = node_args_via(&fx, &proxy.endpoint(), &[]);
    let admin_port: u16 = args[args.iter().position(|a| a == "--admin-addr").unwrap() + 1]
        .rsplit(':')
        .next()
        .unwrap()
        .parse()?;
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &AWS_ENV)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &pod_on_node("waits", node_name, json!({}))?,
    )
    .await?;
    wait_until(
        "the pod carries ProviderRefused (Unavailable) and stays Pending",
        Duration::from_secs(60),
        || async {
            let status = pods.get("waits").await?.status.unwrap_or_default();
            anyhow::ensure!(
                status.phase.as_deref() == Some("Pending"),
                "no capacity: the pod must stay Pending: {status:?}; calls (forwarded, faulted): {:?}",
                proxy.counts()
            );
            Ok(status.conditions.unwrap_or_default().iter().any(|c| {
                c.type_ == "spillway.io/ProviderRefused"
                    && c.status == "True"
                    && c.reason.as_deref() == Some("Unavailable")
                    && c.message
                        .as_deref()
                        .is_some_and(|m| m.contains("Capacity is unavailable"))
            }))
        },
    )
    .await?;
    let metrics = spillway_e2e::metrics_text(admin_port)?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("spillway_provider_errors_total")
                && l.contains("class=\"unavailable\"")),
        "{metrics}"
    );
    proxy.clear("RunTask");
    wait_running(&pods, "waits", Duration::from_secs(120)).await?;
    let status = pods.get("waits").await?.status.unwrap_or_default();
    assert!(
        !status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "spillway.io/ProviderRefused" && c.status == "True"),
        "the condition goes once the pod runs"
    );
    assert_eq!(
        running_tasks(aws, cluster).await?.len(),
        1,
        "one task, not one per attempt"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn a_pod_whose_configmap_is_missing_waits_for_it_without_a_task() -> anyhow::Result<()> {
    let fx = FargateFixture::new("e2e-waits").await?;
    let (client, aws, cluster) = (&fx.node.client, &fx.aws, &fx.cluster);
    let (ns, node_name) = (&fx.node.ns, &fx.node.node_name);
    let _node = fx.start_node()?;
    let spec = json!({"containers": [{"name": "app", "image": "nginx:1.27",
        "env": [{"name": "CONF", "valueFrom": {"configMapKeyRef": {"name": "later", "key": "conf"}}}]}]});
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &pod_on_node("waits", node_name, spec)?,
    )
    .await?;
    wait_until(
        "MandatoryConfigMapNotFound",
        Duration::from_secs(30),
        || async {
            let reasons = kubectl(&[
                "get",
                "events",
                "-n",
                &ns.name,
                "--field-selector",
                "involvedObject.name=waits",
                "-o",
                "jsonpath={.items[*].reason}",
            ])?;
            Ok(reasons.contains("MandatoryConfigMapNotFound"))
        },
    )
    .await?;
    assert_eq!(
        pods.get("waits")
            .await?
            .status
            .and_then(|s| s.phase)
            .as_deref(),
        Some("Pending")
    );
    assert!(
        running_tasks(aws, cluster).await?.is_empty(),
        "no task before the ConfigMap exists"
    );
    kubectl(&[
        "create",
        "configmap",
        "later",
        "-n",
        &ns.name,
        "--from-literal=conf=on",
    ])?;
    wait_until(
        "waits Running once the ConfigMap exists",
        Duration::from_secs(60),
        || async {
            Ok(pods
                .get("waits")
                .await?
                .status
                .and_then(|s| s.phase)
                .as_deref()
                == Some("Running"))
        },
    )
    .await?;
    let uid = pods.get("waits").await?.metadata.uid.unwrap_or_default();
    assert_eq!(
        running_tasks(aws, cluster).await?.get(&uid).map(Vec::len),
        Some(1)
    );
    Ok(())
}

/// The flags of `fx`'s node with `endpoint` as its AWS endpoint and `extra` added.
fn node_args_via(fx: &FargateFixture, endpoint: &str, extra: &[&str]) -> Vec<String> {
    let mut args = fx.args.clone();
    let at = args
        .iter()
        .position(|a| a == "--aws-endpoint")
        .expect("the flag is there");
    args[at + 1] = endpoint.to_owned();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

async fn secret_names(aws: &Aws, prefix: &str) -> anyhow::Result<Vec<String>> {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&aws.endpoint)
        .credentials_provider(aws_sdk_ecs::config::Credentials::new(
            "testing", "testing", None, None, "e2e",
        ))
        .load()
        .await;
    let secrets = aws_sdk_secretsmanager::Client::new(&config);
    let listed = secrets.list_secrets().max_results(100).send().await?;
    Ok(listed
        .secret_list()
        .iter()
        .filter_map(|s| s.name())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn a_crash_between_the_secret_and_run_task_leaks_nothing() -> anyhow::Result<()> {
    let fx = FargateFixture::new("e2e-crash-secret").await?;
    let (client, ns, node_name) = (&fx.node.client, &fx.node.ns, &fx.node.node_name);
    let proxy = spillway_e2e::aws_fault_proxy::AwsFaultProxy::start(&fx.aws.endpoint).await?;
    // Every RunTask hangs: the node writes the pods' secrets and then waits forever.
    proxy.fail_next("RunTask", 1000, spillway_e2e::aws_fault_proxy::Fault::Stall);
    let args = node_args_via(&fx, &proxy.endpoint(), &["--sweep-interval-seconds", "2"]);
    let log = format!("vk-{}", ns.name);
    let mut node = SpillwayProcess::start(&args, &log, &AWS_ENV)?;

    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "token"}, "stringData": {"value": "t0k3n"}}),
    )?;
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await?;
    let spec = json!({"containers": [{"name": "app", "image": "nginx:1.27",
        "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "token", "key": "value"}}}]}]});
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    for name in ["goes", "stays"] {
        pods.create(
            &PostParams::default(),
            &pod_on_node(name, node_name, spec.clone())?,
        )
        .await?;
    }
    // The node names no cluster id: it derives one from kube-system's UID.
    let prefix = format!(
        "spillway/{}/{node_name}/",
        derived_cluster_id(client).await?
    );
    wait_until(
        "both secrets written, RunTask hanging",
        Duration::from_secs(60),
        || async {
            Ok(secret_names(&fx.aws, &prefix).await?.len() == 2
                && proxy
                    .counts()
                    .get("RunTask")
                    .is_some_and(|(_, faulted)| *faulted >= 2))
        },
    )
    .await?;
    // The crash: kill -9 with the secrets written and no task started.
    node.kill()?;
    let goes_uid = pods.get("goes").await?.metadata.uid.unwrap_or_default();
    pods.delete("goes", &DeleteParams::default().grace_period(0))
        .await?;
    drop(proxy);

    // Restarted (straight to moto): the pod still bound runs once, with its one secret;
    // the deleted pod's secret is swept.
    let _node = SpillwayProcess::start(
        &node_args_via(&fx, &fx.aws.endpoint, &["--sweep-interval-seconds", "2"]),
        &log,
        &AWS_ENV,
    )?;
    wait_until(
        "stays Running after the restart",
        Duration::from_secs(60),
        || async {
            Ok(pods
                .get("stays")
                .await?
                .status
                .and_then(|s| s.phase)
                .as_deref()
                == Some("Running"))
        },
    )
    .await?;
    wait_until(
        "the deleted pod's secret swept",
        Duration::from_secs(30),
        || async {
            Ok(!secret_names(&fx.aws, &prefix)
                .await?
                .iter()
                .any(|n| n.ends_with(&goes_uid)))
        },
    )
    .await?;
    let stays_uid = pods.get("stays").await?.metadata.uid.unwrap_or_default();
    assert_eq!(
        secret_names(&fx.aws, &prefix).await?,
        vec![format!("{prefix}{stays_uid}")],
        "exactly the live pod's secret is left"
    );
    let tasks = running_tasks(&fx.aws, &fx.cluster).await?;
    assert_eq!(tasks.get(&stays_uid).map(Vec::len), Some(1), "{tasks:?}");
    assert!(!tasks.contains_key(&goes_uid), "a task for the deleted pod");
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn a_throttled_stop_keeps_the_pod_until_its_task_is_stopped() -> anyhow::Result<()> {
    let fx = FargateFixture::new("e2e-throttled-stop").await?;
    let (client, ns, node_name) = (&fx.node.client, &fx.node.ns, &fx.node.node_name);
    let proxy = spillway_e2e::aws_fault_proxy::AwsFaultProxy::start(&fx.aws.endpoint).await?;
    let args = node_args_via(&fx, &proxy.endpoint(), &[]);
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &AWS_ENV)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &pod_on_node("web", node_name, json!({}))?,
    )
    .await?;
    wait_running(&pods, "web", Duration::from_secs(60)).await?;
    let uid = pods.get("web").await?.metadata.uid.unwrap_or_default();
    // More throttled StopTasks than the SDK retries on its own: the node must retry.
    proxy.fail_next(
        "StopTask",
        8,
        spillway_e2e::aws_fault_proxy::Fault::Throttle,
    );
    pods.delete("web", &DeleteParams::default()).await?;
    // The Pod stays (Terminating) through the throttled stops and goes after its task.
    wait_until("web removed", Duration::from_secs(120), || async {
        Ok(pods.get_opt("web").await?.is_none())
    })
    .await?;
    let (_, throttled) = proxy.counts().get("StopTask").copied().unwrap_or_default();
    assert_eq!(
        throttled,
        8,
        "every planned throttle was met: {:?}",
        proxy.counts()
    );
    assert!(
        !running_tasks(&fx.aws, &fx.cluster)
            .await?
            .contains_key(&uid),
        "the pod is gone and its task still runs"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn two_clusters_sharing_an_ecs_cluster_never_stop_each_others_tasks() -> anyhow::Result<()> {
    let fx = FargateFixture::new("e2e-two-clusters").await?;
    let (client, ns, node_name) = (&fx.node.client, &fx.node.ns, &fx.node.node_name);
    let log = format!("vk-{}", ns.name);
    let sweep = ["--sweep-interval-seconds", "2"];
    let alpha_args = node_args_via(
        &fx,
        &fx.aws.endpoint,
        &[&["--cluster-id", "alpha"][..], &sweep].concat(),
    );
    let mut alpha = SpillwayProcess::start(&alpha_args, &log, &AWS_ENV)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    for name in ["a0", "a1"] {
        pods.create(
            &PostParams::default(),
            &pod_on_node(name, node_name, json!({}))?,
        )
        .await?;
    }
    wait_until("alpha's two tasks", Duration::from_secs(60), || async {
        Ok(running_tasks(&fx.aws, &fx.cluster).await?.len() == 2)
    })
    .await?;
    // Cluster alpha goes out of sight: its node stops and its pods are none of beta's
    // business (another cluster's API), while their tasks keep running in ECS.
    alpha.kill()?;
    for name in ["a0", "a1"] {
        pods.delete(name, &DeleteParams::default().grace_period(0))
            .await?;
    }
    wait_until(
        "alpha's pods gone from this API",
        Duration::from_secs(30),
        || async { Ok(pods.list(&ListParams::default()).await?.items.is_empty()) },
    )
    .await?;
    // Cluster beta's node, same node name, same ECS cluster: it adopts, sweeps (every
    // 2 s) and must leave alpha's tasks alone.
    let beta_args = node_args_via(
        &fx,
        &fx.aws.endpoint,
        &[&["--cluster-id", "beta"][..], &sweep].concat(),
    );
    let _beta = SpillwayProcess::start(&beta_args, &log, &AWS_ENV)?;
    pods.create(
        &PostParams::default(),
        &pod_on_node("b0", node_name, json!({}))?,
    )
    .await?;
    wait_running(&pods, "b0", Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let tasks = running_tasks(&fx.aws, &fx.cluster).await?;
    assert_eq!(
        tasks.len(),
        3,
        "alpha's two tasks survive beta's sweeps: {:?}",
        tasks.keys()
    );
    // Clean up alpha's tasks, as alpha's own node would.
    for task in tasks.values().flatten() {
        let started_by = task.started_by().unwrap_or_default();
        if started_by.starts_with("alpha_") {
            fx.aws
                .ecs
                .stop_task()
                .cluster(&fx.cluster)
                .task(task.task_arn().unwrap_or_default())
                .send()
                .await?;
        }
    }
    Ok(())
}

/// The node's own count of `op` calls at the provider (every attempt, any result).
fn provider_calls(admin_port: u16, op: &str) -> anyhow::Result<f64> {
    let metrics = spillway_e2e::metrics_text(admin_port)?;
    Ok(metrics
        .lines()
        .filter(|l| {
            l.starts_with("spillway_provider_requests_total") && l.contains(&format!("op=\"{op}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn two_hundred_pods_all_run_through_throttling_and_server_errors() -> anyhow::Result<()> {
    let fx = FargateFixture::new("e2e-throttling").await?;
    let (client, ns, node_name) = (&fx.node.client, &fx.node.ns, &fx.node.node_name);
    let proxy = spillway_e2e::aws_fault_proxy::AwsFaultProxy::start(&fx.aws.endpoint).await?;
    // A fifth of all calls throttled, one in twenty a 5xx; and the first 100 RunTasks
    // throttled, more than the creates in flight retry, so pods must wait and say so.
    proxy.set_shares(0.2, 0.05);
    proxy.fail_next(
        "RunTask",
        100,
        spillway_e2e::aws_fault_proxy::Fault::Throttle,
    );
    let args = node_args_via(&fx, &proxy.endpoint(), &[]);
    let admin_port: u16 = args[args.iter().position(|a| a == "--admin-addr").unwrap() + 1]
        .rsplit(':')
        .next()
        .unwrap()
        .parse()?;
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &AWS_ENV)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    for i in 0..200 {
        pods.create(
            &PostParams::default(),
            &pod_on_node(&format!("p{i:03}"), node_name, json!({}))?,
        )
        .await?;
    }
    wait_until("200 pods Running", Duration::from_secs(300), || async {
        let list = pods.list(&ListParams::default()).await?;
        let failed: Vec<String> = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"))
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        anyhow::ensure!(
            failed.is_empty(),
            "pods Failed under throttling: {failed:?}"
        );
        Ok(list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count()
            == 200)
    })
    .await?;
    let tasks = running_tasks(&fx.aws, &fx.cluster).await?;
    assert_eq!(tasks.len(), 200, "one task per pod");
    assert!(tasks.values().all(|t| t.len() == 1), "a pod with two tasks");
    let events = kubectl(&[
        "get",
        "events",
        "-n",
        &ns.name,
        "-o",
        "jsonpath={.items[*].reason}",
    ])?;
    assert!(
        events.contains("ProviderThrottled"),
        "an Event says the pods wait on throttling: {events}"
    );
    // Every RunTask attempt that reached the wire went through the node's own accounting
    // (and its token bucket): no retry happened behind its back. (RunTask, because it is
    // done once all pods run; status reads go on.)
    let counts = proxy.counts();
    let (forwarded, faulted) = counts.get("RunTask").copied().unwrap_or_default();
    let counted = provider_calls(admin_port, "RunTask")?;
    assert!(
        faulted > 100,
        "RunTask was faulted beyond the planned 100: {counts:?}"
    );
    assert_eq!(
        counted,
        (forwarded + faulted) as f64,
        "RunTask: {forwarded} forwarded + {faulted} faulted on the wire, {counted} counted by the node"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn a_log_of_twenty_thousand_lines_is_served_whole_and_tails_exactly() -> anyhow::Result<()> {
    let fx = FargateFixture::new("e2e-long-log").await?;
    let (client, ns) = (&fx.node.client, &fx.node.ns);
    let _node = fx.start_node()?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let (group, stream) = chatty_log_stream(&fx, &pods).await?;
    // 20,000 lines, ten to a millisecond (so pages end amid equal timestamps), in two
    // batches of 10,000 (CloudWatch's limit per call and per page).
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64
        - 60_000;
    for batch in 0..2 {
        let events = (0..10_000).map(|i| {
            let n = batch * 10_000 + i;
            aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                .timestamp(start + n as i64 / 10)
                .message(format!("line {n:05}"))
                .build()
        });
        fx.aws
            .logs
            .put_log_events()
            .log_group_name(&group)
            .log_stream_name(&stream)
            .set_log_events(Some(events.collect::<Result<Vec<_>, _>>()?))
            .send()
            .await?;
    }
    let whole = kubectl(&["logs", "-n", &ns.name, "chatty"])?;
    let lines: Vec<&str> = whole.lines().collect();
    assert_eq!(lines.len(), 20_000, "every line, across pages");
    assert!(
        lines
            .iter()
            .enumerate()
            .all(|(n, l)| *l == format!("line {n:05}")),
        "in order, none twice"
    );
    let tail = kubectl(&["logs", "-n", &ns.name, "chatty", "--tail=5"])?;
    assert_eq!(
        tail,
        "line 19995\nline 19996\nline 19997\nline 19998\nline 19999\n"
    );
    let tail = kubectl(&["logs", "-n", &ns.name, "chatty", "--tail=12000"])?;
    assert_eq!(tail.lines().count(), 12_000, "a tail longer than one page");
    assert!(tail.starts_with("line 08000\n"), "{}", &tail[..20]);
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn a_hung_status_call_does_not_hold_up_new_pods() -> anyhow::Result<()> {
    let fx = FargateFixture::new("e2e-hung-describe").await?;
    let (client, ns, node_name) = (&fx.node.client, &fx.node.ns, &fx.node.node_name);
    let proxy = spillway_e2e::aws_fault_proxy::AwsFaultProxy::start(&fx.aws.endpoint).await?;
    // Every status read hangs (each attempt until its deadline, then again).
    proxy.fail_next(
        "DescribeTasks",
        1000,
        spillway_e2e::aws_fault_proxy::Fault::Stall,
    );
    let args = node_args_via(&fx, &proxy.endpoint(), &[]);
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &AWS_ENV)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &pod_on_node("first", node_name, json!({}))?,
    )
    .await?;
    let hanging = || proxy.counts().get("DescribeTasks").map_or(0, |(_, f)| *f);
    wait_until("a status read hangs", Duration::from_secs(30), || async {
        Ok(hanging() >= 1)
    })
    .await?;
    // While it hangs, a new pod is seen and started at once.
    pods.create(
        &PostParams::default(),
        &pod_on_node("second", node_name, json!({}))?,
    )
    .await?;
    let started = || proxy.counts().get("RunTask").map_or(0, |(f, _)| *f);
    wait_until(
        "the second pod's RunTask",
        Duration::from_secs(10),
        || async { Ok(started() >= 2) },
    )
    .await?;
    Ok(())
}

/// Runs pod `chatty` on the fixture's node and creates the log stream its `app`
/// container writes to (awslogs' `spillway/<container>/<task id>`): group and stream.
async fn chatty_log_stream(
    fx: &FargateFixture,
    pods: &Api<Pod>,
) -> anyhow::Result<(String, String)> {
    pods.create(
        &PostParams::default(),
        &pod_on_node("chatty", &fx.node.node_name, json!({}))?,
    )
    .await?;
    wait_running(pods, "chatty", Duration::from_secs(60)).await?;
    let uid = pods.get("chatty").await?.metadata.uid.unwrap_or_default();
    let task = running_tasks(&fx.aws, &fx.cluster).await?[&uid][0].clone();
    let task_id = task
        .task_arn()
        .unwrap_or_default()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let (group, stream) = (
        format!("/spillway/{}", fx.cluster),
        format!("spillway/app/{task_id}"),
    );
    fx.aws
        .logs
        .create_log_stream()
        .log_group_name(&group)
        .log_stream_name(&stream)
        .send()
        .await?;
    Ok((group, stream))
}

/// The cluster id a node derives when given none: `k8s-` and the first 12 hex digits of
/// the kube-system namespace's UID (computed here from the UID, not by the node's code).
async fn derived_cluster_id(client: &kube::Client) -> anyhow::Result<String> {
    let kube_system = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .get("kube-system")
        .await?;
    let hex: String = kube_system
        .metadata
        .uid
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    Ok(format!("k8s-{}", hex.to_ascii_lowercase()))
}

/// The peak resident memory of a process (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

/// `kubectl logs -f` read on a thread: how many lines came, and the lines that are not
/// the bulk (`lines` starting with a digit are counted, not kept).
struct BulkFollower {
    child: std::process::Child,
    seen: std::sync::Arc<std::sync::Mutex<(usize, Vec<String>)>>,
}

impl BulkFollower {
    fn start(namespace: &str, pod: &str) -> anyhow::Result<Self> {
        let (child, stdout) = spillway_e2e::kubectl_logs_follow(namespace, pod)?;
        let seen = std::sync::Arc::new(std::sync::Mutex::new((0, Vec::new())));
        let into = seen.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let mut seen = into.lock().unwrap_or_else(|p| p.into_inner());
                seen.0 += 1;
                if !line.starts_with(|c: char| c.is_ascii_digit()) {
                    seen.1.push(line);
                }
            }
        });
        Ok(Self { child, seen })
    }

    /// Lines so far, and the ones kept.
    fn seen(&self) -> (usize, Vec<String>) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for BulkFollower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed: run `make test`"]
async fn two_hundred_megabytes_of_logs_are_streamed_in_little_memory() -> anyhow::Result<()> {
    let fx = FargateFixture::new("e2e-huge-log").await?;
    let (client, ns, node_name) = (&fx.node.client, &fx.node.ns, &fx.node.node_name);
    let node = fx.start_node()?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let (group, stream) = chatty_log_stream(&fx, &pods).await?;
    // 200 MB: 200 batches of 1,000 lines of 1,000 bytes.
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64
        - 3_600_000;
    let filler = "x".repeat(991);
    for batch in 0..200 {
        let events = (0..1_000).map(|i| {
            let n = batch * 1_000 + i;
            aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                .timestamp(start + n as i64 / 100)
                .message(format!("{n:07} {filler}"))
                .build()
        });
        fx.aws
            .logs
            .put_log_events()
            .log_group_name(&group)
            .log_stream_name(&stream)
            .set_log_events(Some(events.collect::<Result<Vec<_>, _>>()?))
            .send()
            .await?;
    }
    let before = peak_rss(node.child.id())?;

    // Five followers and a plain read at once, while a new pod starts.
    let followers: Vec<BulkFollower> = (0..5)
        .map(|_| BulkFollower::start(&ns.name, "chatty"))
        .collect::<anyhow::Result<_>>()?;
    pods.create(
        &PostParams::default(),
        &pod_on_node("newcomer", node_name, json!({}))?,
    )
    .await?;
    let plain = kubectl(&["logs", "-n", &ns.name, "chatty"])?;
    let cap = spillway_vk_node::provider::LOG_READ_CAP_BYTES;
    let last = plain.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("spillway: the virtual node stopped this read at 10485760 bytes"),
        "the last line says where the read stopped: {last}"
    );
    assert!(
        plain.len() <= cap + last.len() + 2 && plain.len() > cap - 2_000,
        "{} bytes",
        plain.len()
    );
    assert!(plain.starts_with("0000000 x"), "from the head");
    wait_running(&pods, "newcomer", Duration::from_secs(60)).await?;

    // Each follower got the capped head and the notice; lines written now arrive, each
    // once, and nothing of the old log comes again.
    wait_until(
        "every follower to reach the end of its capped read",
        Duration::from_secs(180),
        || async {
            Ok(followers
                .iter()
                .all(|f| f.seen().1.iter().any(|l| l.starts_with("spillway: "))))
        },
    )
    .await?;
    let counted: Vec<usize> = followers.iter().map(|f| f.seen().0).collect();
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let events = (1..=3).map(|i| {
        aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
            .timestamp(later + i)
            .message(format!("after {i}"))
            .build()
    });
    fx.aws
        .logs
        .put_log_events()
        .log_group_name(&group)
        .log_stream_name(&stream)
        .set_log_events(Some(events.collect::<Result<Vec<_>, _>>()?))
        .send()
        .await?;
    let arrived = wait_until(
        "the new lines at every follower",
        Duration::from_secs(60),
        || async { Ok(followers.iter().all(|f| f.seen().1.len() >= 4)) },
    )
    .await;
    if arrived.is_err() {
        for follower in &followers {
            eprintln!("follower saw {:?}", follower.seen());
        }
    }
    arrived?;
    for (follower, before) in followers.iter().zip(counted) {
        let (count, kept) = follower.seen();
        assert!(
            kept[0].ends_with("following from the newest line"),
            "{kept:?}"
        );
        assert_eq!(kept[1..], ["after 1", "after 2", "after 3"], "{kept:?}");
        assert_eq!(
            count,
            before + 3,
            "only the new lines came after the notice"
        );
    }
    let peak = peak_rss(node.child.id())?;
    eprintln!(
        "node peak RSS: {:.1} MiB before the reads, {:.1} MiB after",
        before as f64 / 1048576.0,
        peak as f64 / 1048576.0
    );
    assert!(
        peak < 256 * 1024 * 1024,
        "the node's peak RSS was {:.1} MiB",
        peak as f64 / 1048576.0
    );
    drop(followers);
    // moto keeps logs in memory: give it back.
    fx.aws
        .logs
        .delete_log_group()
        .log_group_name(&group)
        .send()
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed: run `make test`"]
async fn a_node_without_a_cluster_id_names_its_tasks_after_kube_system_and_refuses_default()
-> anyhow::Result<()> {
    let fx = FargateFixture::new("e2e-cluster-id").await?;
    let (client, ns, node_name) = (&fx.node.client, &fx.node.ns, &fx.node.node_name);
    // The fixture's flags name no cluster id.
    assert!(!fx.args.iter().any(|a| a == "--cluster-id"));
    let _node = fx.start_node()?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &pod_on_node("named", node_name, json!({}))?,
    )
    .await?;
    wait_running(&pods, "named", Duration::from_secs(60)).await?;
    let expected = derived_cluster_id(client).await?;
    let uid = pods.get("named").await?.metadata.uid.unwrap_or_default();
    let task = running_tasks(&fx.aws, &fx.cluster).await?[&uid][0].clone();
    let tag = task
        .tags()
        .iter()
        .find(|t| t.key() == Some("spillway.io/cluster-id"))
        .and_then(|t| t.value())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(tag, expected);
    assert!(
        task.started_by()
            .unwrap_or_default()
            .starts_with(&format!("{expected}_")),
        "{:?}",
        task.started_by()
    );

    // The literal default, shared by every old install, is refused at start…
    let mut shared = fx.args.clone();
    shared.extend(["--cluster-id".to_owned(), "default".to_owned()]);
    let mut refused = std::process::Command::new(spillway_e2e::spillway_binary()?)
        .args(&shared)
        .env("KUBECONFIG", spillway_e2e::run_dir().join("kubeconfig"))
        .envs(AWS_ENV)
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let exited = wait_until(
        "the node to refuse to start",
        Duration::from_secs(30),
        || {
            let status = refused.try_wait().map_err(anyhow::Error::from);
            async move { Ok(status?.is_some()) }
        },
    )
    .await;
    if exited.is_err() {
        let _ = refused.kill();
    }
    let output = refused.wait_with_output()?;
    exited?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started on the shared default");
    assert!(
        stderr.contains("--cluster-id default") && stderr.contains("--allow-default-cluster-id"),
        "{stderr}"
    );
    Ok(())
}

// Several threads: the probe server and the fault proxy run beside the test's waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed: run `make test`"]
async fn fargate_pods_are_ready_when_their_probe_passes_and_relaunched_when_liveness_fails()
-> anyhow::Result<()> {
    let fx = FargateFixture::new("e2e-fg-probes").await?;
    let (client, aws, cluster) = (&fx.node.client, &fx.aws, &fx.cluster);
    let (ns, node_name) = (&fx.node.ns, &fx.node.node_name);
    // The node probes the task's IP; the proxy gives every task 127.0.0.1, where the
    // test answers the probes (never any other address).
    let target = spillway_e2e::probe_target::ProbeTarget::start().await?;
    let proxy = spillway_e2e::aws_fault_proxy::AwsFaultProxy::start(&fx.aws.endpoint).await?;
    proxy.rewrite_task_ips("127.0.0.1");
    let args = node_args_via(&fx, &proxy.endpoint(), &[]);
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &AWS_ENV)?;
    let port = target.port;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &pod_on_node(
            "probed",
            node_name,
            json!({"containers": [{"name": "app", "image": "nginx:1.27",
                "readinessProbe": {"httpGet": {"path": "/ready", "port": port}, "periodSeconds": 1},
                "livenessProbe": {"httpGet": {"path": "/live", "port": port}, "periodSeconds": 1,
                    "failureThreshold": 2}}]}),
        )?,
    )
    .await?;
    let ready = || async {
        let status = pods.get("probed").await?.status.unwrap_or_default();
        let ready = status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        anyhow::Ok((status.phase.unwrap_or_default(), ready))
    };
    wait_until("Running, not ready", Duration::from_secs(60), || async {
        Ok(ready().await? == ("Running".to_owned(), false))
    })
    .await?;
    let pod_ip = pods
        .get("probed")
        .await?
        .status
        .and_then(|s| s.pod_ip)
        .unwrap_or_default();
    assert_eq!(
        pod_ip, "127.0.0.1",
        "the task's address, as the proxy gave it"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!ready().await?.1, "not ready while its probe fails");
    target.set_ready(200);
    wait_until("ready", Duration::from_secs(30), || async {
        Ok(ready().await?.1)
    })
    .await?;
    let first_task = running_tasks(aws, cluster).await?;
    assert_eq!(first_task.len(), 1);
    // Liveness fails: the task is stopped and a new one runs, the restart counted.
    target.set_live(500);
    let restarts = || async {
        let status = pods.get("probed").await?.status.unwrap_or_default();
        anyhow::Ok(
            status
                .container_statuses
                .and_then(|c| c.first().map(|c| c.restart_count))
                .unwrap_or(0),
        )
    };
    wait_until("restartCount raised", Duration::from_secs(60), || async {
        Ok(restarts().await? >= 1)
    })
    .await?;
    target.set_live(200);
    wait_until(
        "relaunched: one new task, ready again",
        Duration::from_secs(90),
        || async {
            let tasks = running_tasks(aws, cluster).await?;
            let arns: Vec<Option<&str>> = tasks.values().flatten().map(|t| t.task_arn()).collect();
            let first: Vec<Option<&str>> = first_task
                .values()
                .flatten()
                .map(|t| t.task_arn())
                .collect();
            Ok(arns.len() == 1 && arns != first && ready().await?.1)
        },
    )
    .await?;
    Ok(())
}

// Several threads: the fault proxy runs beside the test's waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed: run `make test`"]
async fn an_exec_liveness_probe_becomes_an_ecs_health_check_whose_verdict_restarts_the_pod()
-> anyhow::Result<()> {
    let fx = FargateFixture::new("e2e-fg-exec").await?;
    let (client, aws, cluster) = (&fx.node.client, &fx.aws, &fx.cluster);
    let (ns, node_name) = (&fx.node.ns, &fx.node.node_name);
    // No address is probed: ECS runs the exec probe; the proxy reports its verdict.
    let proxy = spillway_e2e::aws_fault_proxy::AwsFaultProxy::start(&fx.aws.endpoint).await?;
    proxy.rewrite_task_ips("127.0.0.1");
    proxy.set_container_health("HEALTHY");
    let args = node_args_via(&fx, &proxy.endpoint(), &[]);
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &AWS_ENV)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &pod_on_node(
            "checked",
            node_name,
            json!({"containers": [{"name": "app", "image": "nginx:1.27",
                "livenessProbe": {"exec": {"command": ["/bin/check", "--deep"]},
                    "periodSeconds": 15, "failureThreshold": 4}}]}),
        )?,
    )
    .await?;
    wait_running(&pods, "checked", Duration::from_secs(60)).await?;
    // The task definition carries the probe as ECS's health check.
    let tasks = running_tasks(aws, cluster).await?;
    let definition_arn = tasks
        .values()
        .flatten()
        .next()
        .and_then(|t| t.task_definition_arn())
        .unwrap_or_default()
        .to_owned();
    let definition = aws
        .ecs
        .describe_task_definition()
        .task_definition(&definition_arn)
        .send()
        .await?;
    let check = definition
        .task_definition()
        .and_then(|d| d.container_definitions().first())
        .and_then(|c| c.health_check())
        .expect("a health check in the task definition");
    assert_eq!(check.command(), ["CMD", "/bin/check", "--deep"]);
    assert_eq!((check.interval(), check.retries()), (Some(15), Some(4)));
    // ECS says UNHEALTHY: the node stops the task and starts a new one, counted.
    proxy.set_container_health("UNHEALTHY");
    let restarts = || async {
        let status = pods.get("checked").await?.status.unwrap_or_default();
        anyhow::Ok(
            status
                .container_statuses
                .and_then(|c| c.first().map(|c| c.restart_count))
                .unwrap_or(0),
        )
    };
    wait_until("restartCount raised", Duration::from_secs(60), || async {
        Ok(restarts().await? >= 1)
    })
    .await?;
    proxy.set_container_health("HEALTHY");
    wait_until("running again", Duration::from_secs(90), || async {
        Ok(running_tasks(aws, cluster)
            .await?
            .values()
            .flatten()
            .count()
            == 1
            && phase_is_running(&pods, "checked").await?)
    })
    .await?;
    Ok(())
}

async fn phase_is_running(pods: &Api<Pod>, name: &str) -> anyhow::Result<bool> {
    Ok(pods
        .get(name)
        .await?
        .status
        .and_then(|s| s.phase)
        .as_deref()
        == Some("Running"))
}

/// The node checks its set-up at start, in the region the SDK's chain gives (no
/// `--aws-region`: `AWS_REGION`, as EKS sets it): a missing ECS cluster and log group are
/// each logged as one sentence, `spillway_provider_ready` is 0 and the node stays tainted
/// provider-degraded although its calls answer; once the operator creates both, the next
/// check finds it ready, the taint goes and a pod runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed: run `make test`"]
async fn a_node_whose_cluster_and_log_group_are_missing_says_so_and_stays_tainted_until_they_exist()
-> anyhow::Result<()> {
    let node = NodeFixture::new("e2e-setup", "fargate").await?;
    let aws = aws().await?;
    let cluster = node.ns.name.clone();
    let args = fargate_node(&aws, &node.node_name, &cluster)?;
    assert!(!args.iter().any(|a| a == "--aws-region"));
    let admin_port = spillway_e2e::admin_port(&args)?;
    let log = format!("vk-{cluster}");
    let _process = SpillwayProcess::start(&args, &log, &AWS_ENV)?;
    spillway_e2e::wait_provider_ready(
        admin_port,
        &node.node_name,
        "fargate",
        false,
        Duration::from_secs(60),
    )
    .await?;
    let text = std::fs::read_to_string(spillway_e2e::log_path(&log))?;
    for sentence in [
        format!("ECS cluster {cluster} not found in us-east-1"),
        format!("CloudWatch Logs group /spillway/{cluster} not found in us-east-1"),
    ] {
        assert!(text.contains(&sentence), "{sentence} not logged: {text}");
    }
    assert!(
        !text.contains("no task execution role") && !text.contains("no AWS credentials"),
        "{text}"
    );
    wait_until(
        "the provider-degraded taint",
        Duration::from_secs(30),
        || spillway_e2e::has_degraded_taint(&node.client, &node.node_name),
    )
    .await?;

    aws.ecs
        .create_cluster()
        .cluster_name(&cluster)
        .send()
        .await?;
    aws.logs
        .create_log_group()
        .log_group_name(format!("/spillway/{cluster}"))
        .send()
        .await?;
    spillway_e2e::wait_provider_ready(
        admin_port,
        &node.node_name,
        "fargate",
        true,
        Duration::from_secs(75),
    )
    .await?;
    wait_until("the taint gone", Duration::from_secs(30), || async {
        Ok(!spillway_e2e::has_degraded_taint(&node.client, &node.node_name).await?)
    })
    .await?;
    let pods = node.pods();
    pods.create(
        &PostParams::default(),
        &pod_on_node("after-setup", &node.node_name, json!({}))?,
    )
    .await?;
    wait_running(&pods, "after-setup", Duration::from_secs(60)).await?;
    Ok(())
}

/// Subnets and security groups are checked at start too (EC2 `DescribeSubnets` and
/// `DescribeSecurityGroups`, signed like every SDK call): a subnet that does not exist, or
/// a group of another VPC than the subnets', is one sentence in the log and the node stays
/// not ready and tainted; with the test bed's own subnet and group it is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed: run `make test`"]
async fn a_missing_subnet_or_a_security_group_of_another_vpc_is_said_at_start() -> anyhow::Result<()>
{
    let fx = FargateFixture::new("e2e-network").await?;
    let env = spillway_e2e::testbed_env()?;
    let other_group = env["SPILLWAY_TESTBED_OTHER_VPC_SECURITY_GROUP"].clone();
    let vpc = env["SPILLWAY_TESTBED_VPC"].clone();
    let with = |flag: &str, value: &str| -> Vec<String> {
        let mut args = fx.args.clone();
        let at = args.iter().position(|a| a == flag).expect("the flag") + 1;
        args[at] = value.to_owned();
        args
    };
    for (name, args, sentence) in [
        (
            "subnet",
            with("--subnets", "subnet-0e2e00000000missing"),
            "subnets not found in us-east-1".to_owned(),
        ),
        (
            "group",
            with("--security-groups", &other_group),
            format!("security group {other_group} is in "),
        ),
    ] {
        let admin_port = spillway_e2e::admin_port(&args)?;
        let log = format!("vk-{}-{name}", fx.cluster);
        let process = SpillwayProcess::start(&args, &log, &AWS_ENV)?;
        spillway_e2e::wait_provider_ready(
            admin_port,
            &fx.node.node_name,
            "fargate",
            false,
            Duration::from_secs(60),
        )
        .await?;
        let text = std::fs::read_to_string(spillway_e2e::log_path(&log))?;
        assert!(text.contains(&sentence), "{sentence} not logged: {text}");
        if name == "group" {
            assert!(text.contains(&format!("the subnets in {vpc}")), "{text}");
        }
        assert!(
            !text.contains("not found in us-east-1: create it"),
            "the cluster and log group exist: {text}"
        );
        wait_until(
            "the provider-degraded taint",
            Duration::from_secs(30),
            || spillway_e2e::has_degraded_taint(&fx.node.client, &fx.node.node_name),
        )
        .await?;
        drop(process);
    }
    // The test bed's own subnet and group: ready.
    let admin_port = spillway_e2e::admin_port(&fx.args)?;
    let _process = SpillwayProcess::start(&fx.args, &format!("vk-{}-good", fx.cluster), &AWS_ENV)?;
    spillway_e2e::wait_provider_ready(
        admin_port,
        &fx.node.node_name,
        "fargate",
        true,
        Duration::from_secs(60),
    )
    .await?;
    Ok(())
}

/// A RunTask the node's identity may not make (AccessDenied) is no pod's fault: three pods
/// stay Pending with `ProviderRefused` reason `Denied`, none is failed, the refusals across
/// them turn the node provider-degraded, and once the policy is fixed they run and the
/// taint goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed: run `make test`"]
async fn access_denied_across_pods_turns_the_node_degraded_instead_of_failing_them()
-> anyhow::Result<()> {
    let fx = FargateFixture::new("e2e-denied").await?;
    let (client, ns, node_name) = (&fx.node.client, &fx.node.ns, &fx.node.node_name);
    let proxy = spillway_e2e::aws_fault_proxy::AwsFaultProxy::start(&fx.aws.endpoint).await?;
    proxy.fail_next(
        "RunTask",
        100_000,
        spillway_e2e::aws_fault_proxy::Fault::Deny,
    );
    let args = node_args_via(&fx, &proxy.endpoint(), &[]);
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &AWS_ENV)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let names = ["denied-a", "denied-b", "denied-c"];
    for name in names {
        pods.create(
            &PostParams::default(),
            &pod_on_node(name, node_name, json!({}))?,
        )
        .await?;
    }
    wait_until(
        "every pod refused as Denied, none failed",
        Duration::from_secs(90),
        || async {
            let mut denied = 0;
            for name in names {
                let status = pods.get(name).await?.status.unwrap_or_default();
                anyhow::ensure!(
                    status.phase.as_deref() == Some("Pending"),
                    "{name} must stay Pending: {status:?}"
                );
                if status.conditions.unwrap_or_default().iter().any(|c| {
                    c.type_ == "spillway.io/ProviderRefused"
                        && c.status == "True"
                        && c.reason.as_deref() == Some("Denied")
                }) {
                    denied += 1;
                }
            }
            Ok(denied == names.len())
        },
    )
    .await?;
    wait_until(
        "the provider-degraded taint",
        Duration::from_secs(90),
        || spillway_e2e::has_degraded_taint(client, node_name),
    )
    .await?;
    proxy.clear("RunTask");
    for name in names {
        wait_running(&pods, name, Duration::from_secs(180)).await?;
    }
    wait_until("the taint gone", Duration::from_secs(60), || async {
        Ok(!spillway_e2e::has_degraded_taint(client, node_name).await?)
    })
    .await?;
    Ok(())
}

/// `kubectl exec` on a Fargate burst pod, end to end: ECS `ExecuteCommand` (answered by the
/// test's proxy, as moto serves none) and the Session Manager data channel of the fake
/// endpoint that the real session-manager-plugin is checked against (tests/fake_ssm.rs): a
/// shell fed on stdin, a terminal sized and resized, a plain command line, arguments ECS
/// cannot carry refused with a sentence, attach refused with one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed: run `make test`"]
async fn kubectl_exec_reaches_a_fargate_task_through_ecs_exec() -> anyhow::Result<()> {
    use spillway_e2e::fake_ssm::FakeSessionManager;
    use spillway_e2e::pty::{self, Step};
    let fx = FargateFixture::new("e2e-fargate-exec").await?;
    let (client, ns, node_name) = (&fx.node.client, &fx.node.ns, &fx.node.node_name);
    let ssm = std::sync::Arc::new(FakeSessionManager::start().await?);
    let proxy = spillway_e2e::aws_fault_proxy::AwsFaultProxy::start(&fx.aws.endpoint).await?;
    let granted = ssm.clone();
    proxy.answer_execute_command(std::sync::Arc::new(move |request| {
        if request["interactive"] != json!(true) {
            return Err("interactive must be true".into());
        }
        let command = request["command"].as_str().ok_or("command is required")?;
        let grant = granted.grant(command);
        Ok(json!({
            "clusterArn": request["cluster"],
            "containerName": request["container"],
            "interactive": true,
            "taskArn": request["task"],
            "session": {"sessionId": grant.session_id, "streamUrl": grant.stream_url,
                        "tokenValue": grant.token},
        }))
    }));
    let args = node_args_via(
        &fx,
        &proxy.endpoint(),
        &[
            "--enable-exec",
            "--task-role-arn",
            "arn:aws:iam::123456789012:role/spillway-task",
        ],
    );
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &AWS_ENV)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &pod_on_node("web", node_name, json!({}))?,
    )
    .await?;
    spillway_e2e::wait_running(&pods, "web", Duration::from_secs(60)).await?;
    let kubectl_path = spillway_e2e::repo_root().join("e2e/.build/bin/kubectl");
    let kubeconfig = spillway_e2e::run_dir()
        .join("kubeconfig")
        .display()
        .to_string();
    let run = |args: &[&str], stdin: &[u8]| spillway_e2e::kubectl_with_stdin(&ns.name, args, stdin);
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();

    // A shell fed on stdin; stdin's end reaches it as Ctrl-D.
    let out = run(
        &["exec", "-i", "web", "--", "/bin/sh"],
        b"echo hello from fargate\n",
    )?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("hello from fargate"),
        "{}",
        text(&out.stdout)
    );
    let requests = proxy.execute_command_requests();
    let first = requests.first().expect("ExecuteCommand was called");
    assert_eq!(first["cluster"], json!(fx.cluster));
    assert_eq!(first["container"], "app");
    assert_eq!(first["command"], "/bin/sh");
    assert!(
        first["task"].as_str().is_some_and(|t| t.contains(":task/")),
        "{first}"
    );

    // A terminal: its size, then a resize, reach the agent.
    let (code, screen) = pty::drive(
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
            Step::Type("stty size\r".into()),
            Step::WaitFor("40 120".into()),
            Step::Resize(100, 30),
            Step::Sleep(1000),
            Step::Type("stty size\r".into()),
            Step::WaitFor("30 100".into()),
            Step::Type("exit\r".into()),
        ],
    )?;
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains("40 120"), "{screen}");
    assert!(screen.contains("30 100"), "the resize: {screen}");

    // A plain command line.
    let out = run(&["exec", "web", "--", "date"], b"")?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "date ran in the task\n");

    // What ECS Exec cannot carry, and attach: sentences, no session.
    let before = proxy.execute_command_requests().len();
    let out = run(&["exec", "web", "--", "sh", "-c", "echo hi"], b"")?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("splits at spaces"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["attach", "web"], b"")?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("ECS offers no way to attach"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(proxy.execute_command_requests().len(), before);
    Ok(())
}
