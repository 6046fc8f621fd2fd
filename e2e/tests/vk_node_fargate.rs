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
    NodeFixture, SpillwayProcess, kubectl, pod_on_node, testbed_env, vk_node_args, wait_until,
};

struct Aws {
    ecs: aws_sdk_ecs::Client,
    logs: aws_sdk_cloudwatchlogs::Client,
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

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn fargate_pods_run_as_tasks_log_and_stop() -> anyhow::Result<()> {
    let fx = FargateFixture::new("e2e-fargate").await?;
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
    let mut follow =
        std::process::Command::new(spillway_e2e::repo_root().join("e2e/.build/bin/kubectl"))
            .arg("--kubeconfig")
            .arg(spillway_e2e::run_dir().join("kubeconfig"))
            .args(["logs", "-f", "-n", &ns.name, "web"])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
    let stdout = follow.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take(4)
            .collect::<Vec<_>>()
    });
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
    wait_until(
        "the followed stream to deliver the new line",
        Duration::from_secs(20),
        || async { Ok(reader.is_finished()) },
    )
    .await?;
    let _ = follow.kill();
    let lines = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    assert_eq!(
        lines.last().map(String::as_str),
        Some("GET /late 200"),
        "{lines:?}"
    );

    // The secret value reached Secrets Manager only: no ECS request body carries it.
    let recording = moto_recording(&aws.endpoint)?;
    let (mut ecs_requests, mut secret_references, mut secrets_manager_copies) = (0, 0, 0);
    for line in recording.lines() {
        let record: serde_json::Value = serde_json::from_str(line)?;
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
    let _node = fx.start_node()?;
    // The ConfigMap does not exist: a request that can never succeed.
    let spec = json!({"containers": [{"name": "app", "image": "nginx:1.27",
        "env": [{"name": "CONF", "valueFrom": {"configMapKeyRef": {"name": "missing", "key": "conf"}}}]}]});
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &pod_on_node("broken", node_name, spec)?,
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
    assert!(message.contains("configmap missing"), "{message}");
    assert!(
        running_tasks(aws, cluster).await?.is_empty(),
        "no task was started"
    );
    Ok(())
}
