//! The components run under the least-privilege RBAC of `deploy/rbac.yaml`: the webhook
//! syncs its index, the virtual node registers, heartbeats, runs a pod with Secret env,
//! serves its logs and removes it when deleted; the controller leads and repairs a burst
//! pod's deletion cost. Every narrowing is proven by a denial: other nodes and Leases are
//! out of reach, and `deploy/virtual-node-policy.yaml` stops the node's account from
//! deleting or updating the status of pods on any other node.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use spillway_e2e::{
    ControllerUnderTest, NodeCleanupGuard, NodeFixture, SpillwayProcess, TestNamespace,
    WebhookUnderTest, client, kubeconfig_for_service_account, kubectl, phase, pod_on_node,
    virtual_node, vk_node_args, wait_removed, wait_until,
};

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn components_work_with_least_privilege() -> anyhow::Result<()> {
    // The node has the name the RBAC grants name.
    let fixture = NodeFixture::named("e2e-rbac", "spillway-mock").await?;
    let (client, ns, node_name) = (&fixture.client, &fixture.ns, &fixture.node_name);

    let webhook_kubeconfig = kubeconfig_for_service_account("spillway-webhook")?;
    let webhook_env = [(
        "KUBECONFIG",
        webhook_kubeconfig.to_str().unwrap_or_default(),
    )];
    // Becoming ready means every watch listed under the webhook's service account.
    let _webhook =
        WebhookUnderTest::start_with_env(&format!("webhook-{}", ns.name), "", &webhook_env).await?;

    let node_kubeconfig = kubeconfig_for_service_account("spillway-vk-node")?;
    let mut args = vk_node_args(node_name, "mock")?;
    let at = args
        .iter()
        .position(|a| a == "--leader-election-namespace")
        .expect("flag present");
    args[at + 1] = "spillway-system".into();
    let node_env = [("KUBECONFIG", node_kubeconfig.to_str().unwrap_or_default())];
    let _node = SpillwayProcess::start(&args, &format!("vk-{}", ns.name), &node_env)?;

    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "token"}, "stringData": {"value": "t0k3n"}}),
    )?;
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await?;
    let spec = json!({"containers": [{"name": "app", "image": "nginx:1.27",
        "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "token", "key": "value"}}}]}]});
    let pods: Api<Pod> = fixture.pods();
    pods.create(
        &PostParams::default(),
        &pod_on_node("web", node_name, spec)?,
    )
    .await?;
    wait_until(
        "web Running on the node",
        Duration::from_secs(60),
        || async { Ok(phase(&pods, "web").await?.as_deref() == Some("Running")) },
    )
    .await?;
    let logs = kubectl(&["logs", "-n", &ns.name, "web"])?;
    assert!(logs.contains("mock app line 0"), "{logs}");
    pods.delete("web", &DeleteParams::default()).await?;
    // A pod of an opted-in Deployment runs too: the node's own watch index (which tells
    // it the workload opted in) lists under the node's account.
    let template = pod_on_node("unused", node_name, json!({}))?;
    let deployment: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "opted", "annotations": {"spillway.io/burst": "true"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "opted"}},
            "template": {"metadata": {"labels": {"app": "opted"}}, "spec": template.spec}}
    }))?;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &ns.name);
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    wait_until(
        "the opted-in Deployment's pod Running",
        Duration::from_secs(60),
        || async {
            let list = pods
                .list(&kube::api::ListParams::default().labels("app=opted"))
                .await?;
            Ok(list
                .items
                .iter()
                .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")))
        },
    )
    .await?;
    deployments
        .delete("opted", &DeleteParams::default())
        .await?;
    // The grants are as narrow as claimed.
    for (account, verb, resource, allowed) in [
        ("spillway-vk-node", "get", "secrets", true),
        ("spillway-vk-node", "list", "secrets", false),
        ("spillway-vk-node", "create", "pods", false),
        ("spillway-webhook", "watch", "pods", true),
        ("spillway-webhook", "patch", "pods", false),
        ("spillway-webhook", "get", "secrets", false),
    ] {
        let answer = can_i(account, verb, resource)?;
        assert_eq!(answer, allowed, "{account} {verb} {resource}");
    }
    // Its own Node by name only (nodes are cluster-scoped: the namespace is ignored).
    for (verb, node, allowed) in [
        ("patch", "spillway-mock", true),
        ("patch", "kwok-node-0", false),
        ("delete", "spillway-mock", false),
    ] {
        let answer = can_i_in(
            "spillway-vk-node",
            "default",
            verb,
            &format!("nodes/{node}"),
        )?;
        assert_eq!(answer, allowed, "{verb} node {node}");
    }
    for (namespace, lease, allowed) in [
        ("spillway-system", "spillway-vk-spillway-mock", true),
        ("spillway-system", "someone-else", false),
        ("kube-system", "spillway-vk-spillway-mock", false),
    ] {
        let answer = can_i_in(
            "spillway-vk-node",
            namespace,
            "update",
            &format!("leases.coordination.k8s.io/{lease}"),
        )?;
        assert_eq!(answer, allowed, "update lease {namespace}/{lease}");
    }
    wait_removed(&pods, "web").await?;

    // RBAC lets the node's account delete pods anywhere; the admission policy does not
    // let it touch a pod bound to another node.
    let mut elsewhere = pod_on_node("elsewhere", "kwok-node-0", json!({}))?;
    elsewhere.spec.as_mut().unwrap().tolerations = None;
    pods.create(&PostParams::default(), &elsewhere).await?;
    let as_node = |args: &[&str]| {
        std::process::Command::new(spillway_e2e::repo_root().join("e2e/.build/bin/kubectl"))
            .arg("--kubeconfig")
            .arg(&node_kubeconfig)
            .args(args)
            .output()
    };
    // As the node's account: kubectl for the delete, the API for the status update
    // (kubectl reads pods/status first, which RBAC does not grant).
    let node_client = {
        let kubeconfig = kube::config::Kubeconfig::read_from(&node_kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        kube::Client::try_from(config)?
    };
    let node_pods: Api<Pod> = Api::namespaced(node_client, &ns.name);
    let mut denials = Vec::new();
    // The policy is enforced once the apiserver compiled it: allow it a few seconds.
    let mut last = String::new();
    for _ in 0..20 {
        let output = as_node(&["delete", "pod", "elsewhere", "-n", &ns.name, "--wait=false"])?;
        last = String::from_utf8_lossy(&output.stderr).into_owned();
        if !output.status.success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    denials.push(last);
    let status = kube::api::Patch::Merge(json!({"status": {"message": "taken over"}}));
    match node_pods
        .patch_status("elsewhere", &kube::api::PatchParams::default(), &status)
        .await
    {
        Ok(_) => denials.push("the status update was allowed".into()),
        Err(error) => denials.push(error.to_string()),
    }
    for denial in &denials {
        assert!(
            denial.contains("their own pods only") && denial.contains("kwok-node-0"),
            "the policy refuses, naming the pod's node: {denial}"
        );
    }
    assert!(
        pods.get_opt("elsewhere").await?.is_some(),
        "the other node's pod is still there"
    );
    pods.delete("elsewhere", &DeleteParams::default().grace_period(0))
        .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn the_controller_works_with_least_privilege() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "e2e-rbac-controller").await?;
    let kubeconfig = kubeconfig_for_service_account("spillway-controller")?;
    let env = [("KUBECONFIG", kubeconfig.to_str().unwrap_or_default())];
    let controller = ControllerUnderTest::start(
        &format!("controller-{}", ns.name),
        "spillway-system",
        &["--identity", &ns.name],
        &env,
    )?;
    // Leading means its watches listed and it holds the Lease in spillway-system.
    controller.wait_leading(Duration::from_secs(30)).await?;
    // A burst pod without its deletion cost, on a (kwok-kept) virtual node.
    let node_name = format!("spillway-fargate-{}", ns.name);
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &virtual_node(&node_name)?)
        .await?;
    let _node = NodeCleanupGuard(node_name.clone());
    let mut pod = pod_on_node("burst", &node_name, json!({}))?;
    pod.metadata
        .labels
        .get_or_insert_default()
        .insert("spillway.io/placement".into(), "burst".into());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod).await?;
    wait_until(
        "the controller sets the deletion cost",
        Duration::from_secs(30),
        || async {
            let pod = pods.get("burst").await?;
            Ok(pod
                .metadata
                .annotations
                .unwrap_or_default()
                .get("controller.kubernetes.io/pod-deletion-cost")
                .map(String::as_str)
                == Some("-1000"))
        },
    )
    .await?;
    for (verb, resource, allowed) in [
        ("patch", "pods", true),
        ("create", "pods/eviction", true),
        // Backfill placeholders (backfill.mode auto, the default).
        ("create", "pods", true),
        ("get", "secrets", true),
        ("list", "secrets", false),
        ("update", "deployments", false),
    ] {
        // get secrets (by name only) and delete pods come with the embedded virtual
        // node's role; the controller's own loops only patch and evict.
        let answer = can_i("spillway-controller", verb, resource)?;
        assert_eq!(answer, allowed, "spillway-controller {verb} {resource}");
    }
    pods.delete("burst", &DeleteParams::default().grace_period(0))
        .await?;
    Ok(())
}

/// `kubectl auth can-i` as `account` in one namespace.
fn can_i_in(account: &str, namespace: &str, verb: &str, resource: &str) -> anyhow::Result<bool> {
    let output =
        std::process::Command::new(spillway_e2e::repo_root().join("e2e/.build/bin/kubectl"))
            .arg("--kubeconfig")
            .arg(spillway_e2e::run_dir().join("kubeconfig"))
            .args([
                "auth",
                "can-i",
                verb,
                resource,
                "-n",
                namespace,
                "--as",
                &format!("system:serviceaccount:spillway-system:{account}"),
            ])
            .output()?;
    Ok(String::from_utf8_lossy(&output.stdout).trim() == "yes")
}

fn can_i(account: &str, verb: &str, resource: &str) -> anyhow::Result<bool> {
    // `pods/eviction` is asked as resource `pods` with `--subresource eviction`.
    let (resource, subresource) = match resource.split_once('/') {
        Some((resource, sub)) => (resource, Some(sub)),
        None => (resource, None),
    };
    let subresource: Vec<String> = subresource
        .map(|s| vec![format!("--subresource={s}")])
        .unwrap_or_default();
    let output =
        std::process::Command::new(spillway_e2e::repo_root().join("e2e/.build/bin/kubectl"))
            .arg("--kubeconfig")
            .arg(spillway_e2e::run_dir().join("kubeconfig"))
            .args([
                "auth",
                "can-i",
                verb,
                resource,
                "-A",
                "--as",
                &format!("system:serviceaccount:spillway-system:{account}"),
            ])
            .args(&subresource)
            .output()?;
    Ok(String::from_utf8_lossy(&output.stdout).trim() == "yes")
}

/// A client that authenticates as `spillway-system/<account>`.
async fn client_as(account: &str) -> anyhow::Result<kube::Client> {
    let path = spillway_e2e::kubeconfig_for_service_account(account)?;
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed: run `make test`"]
async fn the_controllers_account_may_write_only_spillways_fields_of_a_pod() -> anyhow::Result<()> {
    use kube::api::{Patch, PatchParams};
    let admin = spillway_e2e::client().await?;
    let ns = spillway_e2e::TestNamespace::create(&admin, "e2e-ctl-policy").await?;
    let controller = client_as("spillway-controller").await?;
    // RBAC lets it patch any pod, and create any Node...
    assert!(can_i("spillway-controller", "patch", "pods")?);
    assert!(can_i("spillway-controller", "create", "nodes")?);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns.name);
    let mut victim = pod_on_node("victim", "kwok-node-0", json!({}))?;
    victim.spec.as_mut().unwrap().tolerations = None;
    pods.create(&PostParams::default(), &victim).await?;
    let as_controller: Api<Pod> = Api::namespaced(controller.clone(), &ns.name);
    let dry_run = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    // ...the policy only what Spillway writes. Each refused change is sent as a dry run,
    // so a missing policy would show as an accepted patch, not a changed pod.
    let refused = [
        (
            json!({"spec": {"containers": [{"name": "app", "image": "attacker/miner:1"}]}}),
            "containers",
        ),
        (json!({"metadata": {"labels": {"app": "taken"}}}), "labels"),
        (
            json!({"metadata": {"annotations": {"prometheus.io/scrape": "false"}}}),
            "annotations",
        ),
        (
            json!({"metadata": {"finalizers": ["attacker.example/keep"]}}),
            "finalizers",
        ),
        (
            json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "0e0b0f1e-0000-4000-8000-000000000000"}]}}),
            "owner references",
        ),
    ];
    for (patch, what) in &refused {
        // The apiserver enforces a new policy once it compiled it: a few seconds at most.
        let mut answer = Ok(());
        for _ in 0..20 {
            answer = as_controller
                .patch("victim", &dry_run, &Patch::Strategic(patch.clone()))
                .await
                .map(|_| ());
            if answer.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let error = answer.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            error.contains("Spillway controller may"),
            "changing {what} was not refused: {error:?}"
        );
    }
    // What Spillway writes goes through.
    as_controller
        .patch(
            "victim",
            &PatchParams::default(),
            &Patch::Strategic(json!({
                "metadata": {
                    "labels": {"spillway.io/placement": "local", "spillway.io/reason": "unadmitted"},
                    "annotations": {"controller.kubernetes.io/pod-deletion-cost": "100", "spillway.io/unadmitted": "true"}
                },
                "spec": {"tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Equal", "value": "fargate", "effect": "NoSchedule"}]}
            })),
        )
        .await?;
    let labels = pods
        .get("victim")
        .await?
        .metadata
        .labels
        .unwrap_or_default();
    assert_eq!(
        labels.get("spillway.io/reason").map(String::as_str),
        Some("unadmitted")
    );
    // Nodes only under the virtual nodes' names.
    let nodes: Api<Node> = Api::all(controller);
    let node = |name: &str| -> anyhow::Result<Node> {
        Ok(serde_json::from_value(json!({"metadata": {"name": name}}))?)
    };
    let create_dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let refused_node = nodes
        .create(&create_dry, &node("kwok-node-impostor")?)
        .await;
    let error = refused_node
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("Spillway may create only its virtual nodes"),
        "{error:?}"
    );
    nodes.create(&create_dry, &node("spillway-aci")?).await?;
    pods.delete("victim", &DeleteParams::default().grace_period(0))
        .await?;
    Ok(())
}
