//! The Helm chart: it lints and renders with the defaults and with every option on, its
//! values schema refuses bad values with the key at fault, what it renders is safe (the
//! webhook fails open fast and never sees kube-system or Spillway's own pods, no wildcard
//! RBAC, restricted pods, no credential in values), its alerts pass their promtool unit
//! tests, and it installs on the test bed's real apiserver, where each ServiceAccount may
//! do what its component needs and nothing else.
//!
//! The processes themselves run outside the test bed's cluster (kwok nodes run no
//! containers), so the installed Deployments are scaled to 0; the controller scenario
//! checks the dashboard's and alerts' metric names against a real `/metrics` scrape.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde_json::{Value, json};
use spillway_common::config::OperatorConfig;
use spillway_e2e::chart::{chart_dir, documents, find, helm, helm_output, render};
use spillway_e2e::{kubectl, repo_root};

fn all_options() -> PathBuf {
    chart_dir().join("ci/all-options-values.yaml")
}

/// An EKS install's values (Fargate): the chart refuses the defaults alone, which name no
/// subnets, security groups or execution role.
fn eks() -> PathBuf {
    chart_dir().join("ci/eks-values.yaml")
}

/// An AKS install's values (ACI).
fn aks() -> PathBuf {
    chart_dir().join("ci/aks-values.yaml")
}

/// The chart rendered with an EKS install's values and `yaml` on top.
fn render_eks_with(dir: &Path, name: &str, yaml: &str) -> anyhow::Result<Vec<Value>> {
    let extra = values_file(dir, name, yaml)?;
    render("spillway", "spillway-system", &[eks().as_path(), &extra])
}

fn values_file(dir: &Path, name: &str, yaml: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, yaml)?;
    Ok(path)
}

/// Every container and pod security context of every Deployment meets Pod Security's
/// `restricted` profile as the chart writes it.
fn assert_restricted(docs: &[Value]) {
    let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    assert_eq!(deployments.len(), 2, "webhook and controller Deployments");
    for d in deployments {
        let name = &d["metadata"]["name"];
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{name}"
        );
        for c in pod["containers"].as_array().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(sc["runAsNonRoot"], true, "{name}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{name}"
            );
            assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
            // The admin port is on the pod IP for probes and Prometheus, logs are JSON.
            let env = c["env"].as_array().unwrap();
            let var = |k: &str| {
                env.iter()
                    .find(|e| e["name"] == k)
                    .map(|e| e["value"].clone())
            };
            assert_eq!(
                var("SPILLWAY_ADMIN_ADDR"),
                Some("0.0.0.0:9090".into()),
                "{name}"
            );
            assert_eq!(var("SPILLWAY_LOG_FORMAT"), Some("json".into()), "{name}");
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez", "{name}");
        }
    }
}

/// No rule grants a wildcard, and Secrets are only ever read by name.
fn assert_no_wildcard_rbac(docs: &[Value]) {
    for role in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
    {
        let name = &role["metadata"]["name"];
        for rule in role["rules"].as_array().unwrap() {
            for field in ["apiGroups", "resources", "verbs"] {
                let values = rule[field].as_array().unwrap();
                assert!(
                    values.iter().all(|v| v != "*"),
                    "{name}: wildcard in {field}: {rule}"
                );
            }
            let resources = rule["resources"].as_array().unwrap();
            if resources.iter().any(|r| r == "secrets") {
                assert_eq!(rule["verbs"], serde_json::json!(["get"]), "{name}: {rule}");
            }
        }
    }
}

fn assert_safe_webhook(docs: &[Value], release: &str, namespace: &str) -> anyhow::Result<()> {
    let config = find(docs, "MutatingWebhookConfiguration", release)?;
    let hook = &config["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert_eq!(hook["timeoutSeconds"], 2);
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(hook["admissionReviewVersions"], serde_json::json!(["v1"]));
    assert_eq!(
        hook["rules"][0]["operations"],
        serde_json::json!(["CREATE"])
    );
    assert_eq!(hook["rules"][0]["resources"], serde_json::json!(["pods"]));
    let excluded = &hook["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(excluded["key"], "kubernetes.io/metadata.name");
    assert_eq!(excluded["operator"], "NotIn");
    let names = excluded["values"].as_array().unwrap();
    for ns in ["kube-system", namespace] {
        assert!(
            names.iter().any(|n| n == ns),
            "{ns} not excluded: {names:?}"
        );
    }
    let own = hook["objectSelector"]["matchExpressions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| {
            e["key"] == "app.kubernetes.io/part-of"
                && e["operator"] == "NotIn"
                && e["values"] == serde_json::json!(["spillway"])
        });
    assert!(own, "Spillway's own pods are not excluded: {hook}");
    Ok(())
}

#[test]
#[ignore = "needs helm from the test bed's tools (e2e/testbed up)"]
fn the_chart_lints_and_renders_safe_manifests() -> anyhow::Result<()> {
    let chart = chart_dir().display().to_string();
    for values in [eks(), aks(), all_options()] {
        helm(&[
            "lint",
            "--strict",
            &chart,
            "--values",
            &values.display().to_string(),
        ])?;
    }

    let docs = render("spillway", "spillway-system", &[eks().as_path()])?;
    assert_safe_webhook(&docs, "spillway", "spillway-system")?;
    assert_restricted(&docs);
    assert_no_wildcard_rbac(&docs);
    // The default objectSelector lets only pods labelled for bursting through.
    let hook = &find(&docs, "MutatingWebhookConfiguration", "spillway")?["webhooks"][0];
    assert_eq!(
        hook["objectSelector"]["matchLabels"]["spillway.io/burst"],
        "true"
    );
    // Self-signed TLS: the caBundle is the CA in the Secret, which signed the serving
    // certificate for the Service's name.
    let secret = find(&docs, "Secret", "spillway-webhook-tls")?;
    assert_eq!(hook["clientConfig"]["caBundle"], secret["data"]["ca.crt"]);
    assert_eq!(hook["clientConfig"]["service"]["name"], "spillway-webhook");
    // The operator config the processes read is exactly the defaults they would use, but
    // for the one the chart adds: backfill placeholders run the chart's own image
    // (`spillway pause`).
    let config_map = find(&docs, "ConfigMap", "spillway-config")?;
    let config_text = config_map["data"]["config.yaml"].as_str().unwrap();
    let config = OperatorConfig::from_yaml(config_text, Path::new("config.yaml"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let controller = find(&docs, "Deployment", "spillway-controller")?;
    let mut expected = OperatorConfig::default();
    expected.backfill.placeholder_image =
        controller["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .map(str::to_owned);
    assert!(expected.backfill.placeholder_image.is_some());
    assert_eq!(config, expected);
    // Leader election in the release's namespace, never kube-system.
    let args = controller["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("--leader-election-namespace=spillway-system"),
        "{args}"
    );
    // The region EKS gives the pod (AWS_REGION) is not overridden unless one is set.
    assert!(!args.contains("--aws-region"), "{args}");
    assert!(
        args.contains(
            "--execution-role-arn=arn:aws:iam::123456789012:role/spillway-task-execution"
        ),
        "{args}"
    );
    let dir = tempfile::tempdir()?;
    let with_region = render_eks_with(
        dir.path(),
        "region.yaml",
        "controller:\n  fargate:\n    region: eu-west-1\n",
    )?;
    let controller_with_region = find(&with_region, "Deployment", "spillway-controller")?;
    assert!(
        controller_with_region["spec"]["template"]["spec"]["containers"][0]["args"]
            .to_string()
            .contains("--aws-region=eu-west-1")
    );
    // AKS: the ACI node alone, in the configured location and subnet, new pods to it.
    let on_aks = render("spillway", "spillway-system", &[aks().as_path()])?;
    let aks_args = find(&on_aks, "Deployment", "spillway-controller")?["spec"]["template"]["spec"]
        ["containers"][0]["args"]
        .to_string();
    for flag in [
        "--vk-provider=aci",
        "--aci-location=westeurope",
        "--aci-subnet-ids=/subscriptions/",
    ] {
        assert!(aks_args.contains(flag), "{flag} in {aks_args}");
    }
    assert!(!aks_args.contains("--ecs-cluster"), "{aks_args}");
    let aks_config = find(&on_aks, "ConfigMap", "spillway-config")?["data"]["config.yaml"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(aks_config.contains("defaultProvider: aci"), "{aks_config}");
    // The virtual node's account may touch only pods bound to its own nodes.
    let policy = find(
        &docs,
        "ValidatingAdmissionPolicy",
        "spillway-virtual-node-pods",
    )?;
    let rule = policy["spec"]["validations"][0]["expression"]
        .as_str()
        .unwrap();
    assert!(rule.contains("['spillway-fargate']"), "{rule}");
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    // The controller's account may write only Spillway's fields of a pod, and create only
    // its virtual nodes.
    let updates = find(
        &docs,
        "ValidatingAdmissionPolicy",
        "spillway-controller-pod-updates",
    )?;
    assert_eq!(updates["spec"]["failurePolicy"], "Fail");
    assert!(
        updates["spec"]["matchConditions"][0]["expression"]
            .as_str()
            .unwrap_or_default()
            .contains("system:serviceaccount:spillway-system:spillway-controller")
    );
    let names = find(
        &docs,
        "ValidatingAdmissionPolicy",
        "spillway-virtual-node-names",
    )?;
    assert!(
        names["spec"]["validations"][0]["expression"]
            .as_str()
            .unwrap_or_default()
            .contains("['spillway-fargate']")
    );
    for kind in ["ServiceMonitor", "PrometheusRule", "Certificate", "Issuer"] {
        assert!(
            docs.iter().all(|d| d["kind"] != kind),
            "{kind} rendered by default"
        );
    }

    // NetworkPolicies by default; with the apiserver's addresses, it alone reaches the
    // webhook, and the kubelet API admits it and metrics-server; the scrape source alone
    // reaches the admin port.
    let webhook_policy = find(&docs, "NetworkPolicy", "spillway-webhook")?;
    assert_eq!(webhook_policy["spec"]["policyTypes"], json!(["Ingress"]));
    let all = all_options().display().to_string();
    let options = render("spillway", "spillway-system", &[all_options().as_path()])?;
    let webhook_policy = find(&options, "NetworkPolicy", "spillway-webhook")?;
    let rules = webhook_policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(rules[0]["ports"][0]["port"], 8443);
    assert_eq!(
        rules[0]["from"],
        json!([{"ipBlock": {"cidr": "10.0.0.0/16"}}])
    );
    assert_eq!(rules[1]["ports"][0]["port"], 9090);
    assert_eq!(
        rules[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    let controller_policy = find(&options, "NetworkPolicy", "spillway-controller")?;
    let kubelet = &controller_policy["spec"]["ingress"][0];
    assert_eq!(kubelet["from"].as_array().map(Vec::len), Some(2));
    let providers = options_providers(&options)?;
    let first = kubelet["ports"][0]["port"].as_u64().unwrap_or_default();
    if providers > 1 {
        assert_eq!(
            kubelet["ports"][0]["endPort"].as_u64(),
            Some(first + providers - 1)
        );
    }
    let off = render_eks_with(dir.path(), "off.yaml", "networkPolicy:\n  enabled: false\n")?;
    assert!(off.iter().all(|d| d["kind"] != "NetworkPolicy"));

    // `helm uninstall` first drains the release's virtual nodes: a pre-delete hook Job as
    // the controller's account, one --node per provider; off on request.
    let drain = find(&docs, "Job", "spillway-drain-virtual-nodes")?;
    assert_eq!(
        drain["metadata"]["annotations"]["helm.sh/hook"],
        "pre-delete"
    );
    let pod = &drain["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "spillway-controller");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let sc = &pod["containers"][0]["securityContext"];
    assert_eq!(
        (
            &sc["allowPrivilegeEscalation"],
            &sc["readOnlyRootFilesystem"],
            &sc["capabilities"]["drop"]
        ),
        (&json!(false), &json!(true), &json!(["ALL"]))
    );
    assert_eq!(
        pod["containers"][0]["args"],
        json!([
            "drain-virtual-nodes",
            "--node=spillway-fargate",
            "--timeout-seconds=270"
        ])
    );
    let kept = render_eks_with(
        dir.path(),
        "no-drain.yaml",
        "uninstall:\n  drainVirtualNodes: false\n",
    )?;
    assert!(kept.iter().all(|d| d["kind"] != "Job"));

    // The install notes warn loudly while every namespace may use the virtual nodes.
    let chart = chart_dir().display().to_string();
    let notes = |extra: &[&str]| -> anyhow::Result<String> {
        let mut args = vec!["install", "--dry-run=client", "notes", &chart];
        args.extend(extra);
        let out = helm(&args)?;
        Ok(out[out.find("NOTES:").unwrap_or(0)..].to_owned())
    };
    let eks_values = eks().display().to_string();
    assert!(
        notes(&["--values", &eks_values])?
            .contains("WARNING: controller.allowedNamespaces is empty")
    );
    assert!(!notes(&["--values", &all])?.contains("WARNING"));
    let docs = render("spillway", "spillway-system", &[&all_options()])?;
    // The values an operator expects, each where it belongs.
    let controller = find(&docs, "Deployment", "spillway-controller")?;
    let pod = &controller["spec"]["template"];
    assert_eq!(pod["spec"]["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["spec"]["serviceAccountName"], "spillway-controller");
    assert_eq!(
        pod["metadata"]["annotations"]["example.com/owner"],
        "platform"
    );
    assert_eq!(pod["metadata"]["labels"]["example.com/tier"], "control");
    let container = &pod["spec"]["containers"][0];
    let args = container["args"].to_string();
    for flag in [
        "--sweep-interval-seconds=600",
        "--node-name-prefix=burst-eu",
        "--node-label=eks.amazonaws.com/compute-type=fargate",
        "--node-taint=example.com/burst=only:NoSchedule",
        "--node-taint=dedicated:NoExecute",
        "--enable-exec",
    ] {
        assert!(args.contains(flag), "{flag} in {args}");
    }
    assert!(container["env"].to_string().contains("HTTPS_PROXY"));
    assert!(container["envFrom"].to_string().contains("spillway-extra"));
    assert!(
        container["volumeMounts"]
            .to_string()
            .contains("/etc/extra-ca")
    );
    assert!(pod["spec"]["volumes"].to_string().contains("extra-ca"));
    let account = find(&docs, "ServiceAccount", "spillway-controller")?;
    assert_eq!(account["metadata"]["annotations"]["team"], "platform");
    assert!(
        account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].is_string(),
        "{account}"
    );
    // Every binding and policy names the account and nodes the values chose.
    let renamed = render_eks_with(
        dir.path(),
        "renamed.yaml",
        "controller:\n  serviceAccount:\n    name: burst-controller\n",
    )?;
    find(&renamed, "ServiceAccount", "burst-controller")?;
    for d in renamed
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
    {
        let subjects = d["subjects"].to_string();
        assert!(
            !subjects.contains("spillway-controller"),
            "{} binds the default account: {subjects}",
            d["metadata"]["name"]
        );
    }
    let updates = find(
        &renamed,
        "ValidatingAdmissionPolicy",
        "spillway-controller-pod-updates",
    )?;
    assert!(
        updates
            .to_string()
            .contains("system:serviceaccount:spillway-system:burst-controller"),
        "{updates}"
    );
    let names = find(
        &docs,
        "ValidatingAdmissionPolicy",
        "spillway-virtual-node-names",
    )?;
    assert!(
        names
            .to_string()
            .contains("'burst-eu-fargate','burst-eu-mock'"),
        "{names}"
    );
    let endpoint = &find(&docs, "ServiceMonitor", "spillway")?["spec"]["endpoints"][0];
    assert_eq!(endpoint["scrapeTimeout"], "10s");
    assert_eq!(endpoint["relabelings"][0]["targetLabel"], "host");
    assert_eq!(endpoint["metricRelabelings"][0]["action"], "drop");
    let webhook = find(&docs, "Deployment", "spillway-webhook")?;
    assert!(
        webhook["spec"]["template"]["spec"]["containers"][0]["args"]
            .to_string()
            .contains("--max-connections=2048")
    );
    // Overlay CNIs: host network and its DNS policy; an existing account instead of one.
    let on_overlay = render_eks_with(
        dir.path(),
        "overlay.yaml",
        "webhook:\n  hostNetwork: true\n  dnsPolicy: ClusterFirstWithHostNet\n  \
         serviceAccount:\n    create: false\n    name: existing-webhook\n",
    )?;
    let webhook_pod =
        &find(&on_overlay, "Deployment", "spillway-webhook")?["spec"]["template"]["spec"];
    assert_eq!(webhook_pod["hostNetwork"], true);
    assert_eq!(webhook_pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(webhook_pod["serviceAccountName"], "existing-webhook");
    assert!(
        on_overlay.iter().all(
            |d| !(d["kind"] == "ServiceAccount" && d["metadata"]["name"] == "existing-webhook")
        ),
        "an existing account is not created"
    );
    // By default the controller, which hosts the virtual nodes, preempts ordinary pods.
    let defaults = render("spillway", "spillway-system", &[eks().as_path()])?;
    assert_eq!(
        find(&defaults, "Deployment", "spillway-controller")?["spec"]["template"]["spec"]["priorityClassName"],
        "system-cluster-critical"
    );
    // With allowedNamespaces, Secrets and ConfigMaps are read in those namespaces only.
    let node_role = find(&docs, "ClusterRole", "spillway-virtual-node")?;
    assert!(
        !node_role["rules"].to_string().contains("secrets"),
        "{}",
        node_role["rules"]
    );
    let mut reads: Vec<&str> = docs
        .iter()
        .filter(|d| d["kind"] == "Role" && d["metadata"]["name"] == "spillway-virtual-node-refs")
        .filter_map(|d| d["metadata"]["namespace"].as_str())
        .collect();
    reads.sort();
    assert_eq!(reads, ["default", "kube-public"]);
    assert_safe_webhook(&docs, "spillway", "spillway-system")?;
    assert_restricted(&docs);
    assert_no_wildcard_rbac(&docs);
    let hook = &find(&docs, "MutatingWebhookConfiguration", "spillway")?;
    assert_eq!(
        hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "spillway-system/spillway-webhook"
    );
    assert!(hook["webhooks"][0]["clientConfig"]["caBundle"].is_null());
    assert!(
        docs.iter().all(|d| d["kind"] != "Secret"),
        "cert-manager makes the Secrets"
    );
    let config_map = find(&docs, "ConfigMap", "spillway-config")?;
    let config = OperatorConfig::from_yaml(
        config_map["data"]["config.yaml"].as_str().unwrap(),
        Path::new("config.yaml"),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(config.budget.max_usd_per_hour, Some(25.0));
    // Credentials only as workload identities and Secret references.
    let account = find(&docs, "ServiceAccount", "spillway-controller")?;
    assert_eq!(
        account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/spillway-controller"
    );
    let pod = &find(&docs, "Deployment", "spillway-controller")?["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"]["azure.workload.identity/use"],
        "true"
    );
    let args = pod["spec"]["containers"][0]["args"].to_string();
    for flag in [
        "--cluster-id=prod-eu-1",
        "--allowed-namespaces=default,kube-public",
    ] {
        assert!(args.contains(flag), "{flag} missing: {args}");
    }
    let env_from = pod["spec"]["containers"][0]["envFrom"].to_string();
    assert!(
        env_from.contains("spillway-aws") && env_from.contains("spillway-azure"),
        "{env_from}"
    );
    // The dashboard ConfigMap carries the JSON the repository holds.
    let dashboard = find(&docs, "ConfigMap", "spillway-dashboard")?;
    let shipped: Value = serde_json::from_str(&std::fs::read_to_string(
        chart_dir().join("files/dashboard.json"),
    )?)?;
    let rendered: Value =
        serde_json::from_str(dashboard["data"]["spillway.json"].as_str().unwrap())?;
    assert_eq!(rendered, shipped);
    Ok(())
}

/// How many virtual nodes the rendered controller runs (its `--vk-provider` list).
fn options_providers(docs: &[Value]) -> anyhow::Result<u64> {
    let controller = find(docs, "Deployment", "spillway-controller")?;
    let args = controller["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let providers = args
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--vk-provider="))
        .map_or(0, |list| list.split(',').count());
    Ok(providers as u64)
}

#[test]
#[ignore = "needs helm from the test bed's tools (e2e/testbed up)"]
fn the_values_schema_refuses_bad_values_naming_the_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let chart = chart_dir().display().to_string();
    let cases = [
        (
            "config:\n  capacityThreshold: 1.5\n",
            "/config/capacityThreshold",
        ),
        ("config:\n  hpaThreshold: 0\n", "/config/hpaThreshold"),
        (
            "config:\n  defaultProvider: gcp\n",
            "/config/defaultProvider",
        ),
        (
            "controller:\n  providers: [azure]\n",
            "/controller/providers/0",
        ),
        ("config:\n  rebalance:\n    cooldown: 5\n", "cooldown"),
        (
            "credentials:\n  aws:\n    secretAccessKey: abc\n",
            "secretAccessKey",
        ),
        (
            "webhook:\n  timeoutSeconds: 30\n",
            "/webhook/timeoutSeconds",
        ),
        (
            "controller:\n  fargate:\n    subnets: [10.0.0.0/24]\n",
            "/controller/fargate/subnets/0",
        ),
        // The id every old install shared: two clusters with it stop each other's tasks.
        (
            "controller:\n  clusterId: default\n",
            "/controller/clusterId",
        ),
        (
            "networkPolicy:\n  apiserverCidrs: [apiserver]\n",
            "/networkPolicy/apiserverCidrs/0",
        ),
        // Node label values are label values.
        (
            "controller:\n  virtualNode:\n    labels: {team: has space}\n",
            "/controller/virtualNode/labels/team",
        ),
        // Taints: an effect Kubernetes knows, and never a key the node manages.
        (
            "controller:\n  virtualNode:\n    taints: [{key: burst, effect: Sometimes}]\n",
            "/controller/virtualNode/taints/0/effect",
        ),
        (
            "controller:\n  virtualNode:\n    taints: [{key: virtual-kubelet.io/provider, value: x, effect: NoSchedule}]\n",
            "/controller/virtualNode/taints/0/key",
        ),
    ];
    // Refusals that span keys, on top of a valid EKS or AKS install: what the chart
    // cannot run is refused at render time, naming the key.
    let (eks_values, aks_values) = (eks().display().to_string(), aks().display().to_string());
    let spanning = [
        ("", "controller.fargate.executionRoleArn"),
        (
            "controller:\n  virtualNode:\n    labels: {type: real}\n",
            "controller.virtualNode.labels: type is set by Spillway",
        ),
        (
            "controller:\n  fargate:\n    executionRoleArn: ''\n",
            "controller.fargate.executionRoleArn",
        ),
        (
            "controller:\n  fargate:\n    enableExec: true\n",
            "controller.fargate.enableExec: needs controller.fargate.taskRoleArn",
        ),
        (
            "controller:\n  fargate:\n    subnets: []\n",
            "controller.fargate.subnets",
        ),
        (
            "controller:\n  fargate:\n    securityGroups: []\n",
            "controller.fargate.securityGroups",
        ),
        // AKS with the default provider left at fargate: burst pods would pend for ever.
        (
            "config:\n  defaultProvider: fargate\n",
            "config.defaultProvider: fargate is not in controller.providers (aci)",
        ),
        (
            "config:\n  defaultProvider: fargate,aci\n",
            "config.defaultProvider: fargate is not in controller.providers",
        ),
        (
            "controller:\n  aci:\n    location: ''\n",
            "controller.aci.location",
        ),
        (
            "controller:\n  aci:\n    subnetIds: []\n",
            "controller.aci.subnetIds",
        ),
    ];
    for (i, (yaml, key)) in spanning.iter().enumerate() {
        let base = if key.contains("fargate") && !key.starts_with("config") {
            &eks_values
        } else {
            &aks_values
        };
        let mut args = vec!["template", "s", &chart];
        if !yaml.is_empty() {
            args.extend(["--values", base]);
        }
        let file = values_file(dir.path(), &format!("spanning-{i}.yaml"), yaml)?;
        let file = file.display().to_string();
        args.extend(["--values", &file]);
        let output = helm_output(&args)?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "accepted: {yaml:?}");
        assert!(
            stderr.contains(key),
            "{yaml}: the message does not name {key}: {stderr}"
        );
    }
    for (i, (yaml, key)) in cases.iter().enumerate() {
        let file = values_file(dir.path(), &format!("bad-{i}.yaml"), yaml)?;
        let output = helm_output(&[
            "template",
            "s",
            &chart,
            "--values",
            &file.display().to_string(),
        ])?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "accepted: {yaml}");
        assert!(
            stderr.contains(key),
            "{yaml}: the message does not name {key}: {stderr}"
        );
    }
    Ok(())
}

#[test]
#[ignore = "needs helm (e2e/testbed up) and promtool (make prerequisites)"]
fn the_alerts_pass_their_promtool_unit_tests() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rule = spillway_e2e::chart::rendered_prometheus_rule()?;
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_yaml_ng::to_string(&rule["spec"])?,
    )?;
    std::fs::copy(
        chart_dir().join("tests/alerts_test.yaml"),
        dir.path().join("alerts_test.yaml"),
    )?;
    for args in [
        &["check", "rules", "rules.yaml"][..],
        &["test", "rules", "alerts_test.yaml"][..],
    ] {
        let output = Command::new("promtool")
            .args(args)
            .current_dir(dir.path())
            .output()
            .context("promtool is missing: `make prerequisites` installs it")?;
        assert!(
            output.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Every alert has its runbook section, the anchor its runbook_url names.
    let runbook = std::fs::read_to_string(repo_root().join("docs/metrics.md"))?;
    let alerts: Vec<&Value> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .map(|rules| rules.iter().collect())
        .unwrap_or_default();
    assert!(alerts.len() >= 10, "{} alerts", alerts.len());
    for alert in &alerts {
        let name = alert["alert"].as_str().unwrap_or_default();
        assert!(
            runbook.contains(&format!("\n### {name}\n")),
            "docs/metrics.md has no section for {name}"
        );
        assert_eq!(
            alert["annotations"]["runbook_url"],
            format!(
                "https://docs.example.com/spillway/metrics.md#{}",
                name.to_lowercase()
            )
        );
    }
    // Per alert: off, or another `for` and severity.
    let tuned = spillway_e2e::chart::rendered_prometheus_rule_with(&[
        "prometheusRule.alerts.SpillwayConfigRefused.enabled=false",
        "prometheusRule.alerts.SpillwayBurstRatioHigh.for=2h",
        "prometheusRule.alerts.SpillwayBurstRatioHigh.severity=critical",
    ])?;
    let rules = tuned["spec"]["groups"][0]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(rules.len(), alerts.len() - 1);
    assert!(rules.iter().all(|r| r["alert"] != "SpillwayConfigRefused"));
    let ratio = rules
        .iter()
        .find(|r| r["alert"] == "SpillwayBurstRatioHigh")
        .context("SpillwayBurstRatioHigh rendered")?;
    assert_eq!(ratio["for"], "2h");
    assert_eq!(ratio["labels"]["severity"], "critical");
    Ok(())
}

/// The Prometheus Operator's and cert-manager's CRDs, from their Go modules, so the
/// optional objects dry-run against a real schema.
fn install_crds() -> anyhow::Result<()> {
    let modules = [
        (
            "github.com/prometheus-operator/prometheus-operator@v0.85.0",
            &[
                "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
                "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
            ][..],
        ),
        (
            "github.com/cert-manager/cert-manager@v1.21.2",
            &[
                "deploy/crds/cert-manager.io_certificates.yaml",
                "deploy/crds/cert-manager.io_issuers.yaml",
            ][..],
        ),
    ];
    for (module, files) in modules {
        let output = Command::new("go")
            .args(["mod", "download", "-json", module])
            .current_dir(std::env::temp_dir())
            .env("GOFLAGS", "-mod=mod")
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "go mod download {module}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let info: Value = serde_json::from_slice(&output.stdout)?;
        let dir = PathBuf::from(info["Dir"].as_str().context("no Dir")?);
        for file in files {
            kubectl(&[
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                &dir.join(file).display().to_string(),
            ])?;
        }
    }
    for crd in [
        "servicemonitors.monitoring.coreos.com",
        "prometheusrules.monitoring.coreos.com",
        "certificates.cert-manager.io",
        "issuers.cert-manager.io",
    ] {
        kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{crd}"),
        ])?;
    }
    Ok(())
}

/// `kubectl auth can-i` as a ServiceAccount: whether it may. `what` is a resource,
/// `resource/name`, optionally followed by ` --subresource=…`.
fn can_i(
    account: &str,
    namespace: &str,
    verb: &str,
    what: &str,
    in_ns: Option<&str>,
) -> anyhow::Result<bool> {
    let user = format!("system:serviceaccount:{namespace}:{account}");
    let mut args = vec!["auth", "can-i", verb];
    args.extend(what.split_whitespace());
    args.extend(["--as", &user]);
    if let Some(ns) = in_ns {
        args.extend(["-n", ns]);
    }
    let output = Command::new(repo_root().join("e2e/.build/bin/kubectl"))
        .arg("--kubeconfig")
        .arg(spillway_e2e::run_dir().join("kubeconfig"))
        .args(&args)
        .output()?;
    let answer = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    anyhow::ensure!(
        answer == "yes" || answer == "no",
        "kubectl {args:?}: {answer} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(answer == "yes")
}

/// Uninstalls the release and deletes its namespace, also when the test fails.
struct Release {
    name: String,
    namespace: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = helm_output(&[
            "uninstall",
            &self.name,
            "--namespace",
            &self.namespace,
            "--wait",
        ]);
        spillway_e2e::delete_with_kubectl(&["namespace", &self.namespace]);
    }
}

#[test]
#[ignore = "needs the test bed (e2e/testbed up)"]
fn the_chart_installs_and_each_account_may_do_only_its_job() -> anyhow::Result<()> {
    install_crds()?;
    let chart = chart_dir().display().to_string();
    let all = all_options().display().to_string();
    let namespace = "spillway-chart-e2e";
    // A namespace left by an earlier run goes first (its deletion may still be running).
    kubectl(&[
        "delete",
        "namespace",
        namespace,
        "--ignore-not-found",
        "--wait",
        "--timeout=90s",
    ])?;
    kubectl(&["create", "namespace", namespace])?;
    let release = Release {
        name: "spillway-e2e".into(),
        namespace: namespace.into(),
    };
    // Pod Security "restricted", enforced: the chart's pods must pass it.
    kubectl(&[
        "label",
        "--overwrite",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
    ])?;
    // Everything both renders contain is accepted by the real apiserver's validation.
    let mut pods = Vec::new();
    let (eks_values, aks_values) = (eks().display().to_string(), aks().display().to_string());
    for values in [eks_values.as_str(), aks_values.as_str(), all.as_str()] {
        let args = [
            "template",
            "spillway-e2e",
            &chart,
            "--namespace",
            namespace,
            "--values",
            values,
        ];
        let rendered = helm(&args)?;
        let dir = tempfile::tempdir()?;
        let path = values_file(dir.path(), "rendered.yaml", &rendered)?;
        kubectl(&[
            "apply",
            "--dry-run=server",
            "-f",
            &path.display().to_string(),
        ])
        .with_context(|| format!("server-side dry run with values {values:?}"))?;
        // Each Deployment's pod, as the ReplicaSet would create it, is checked against
        // "restricted" once the install made the ServiceAccounts.
        for deployment in documents(&rendered)?
            .iter()
            .filter(|d| d["kind"] == "Deployment")
        {
            pods.push(serde_json::json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": deployment["metadata"]["name"],
                    "namespace": namespace,
                    "labels": deployment["spec"]["template"]["metadata"]["labels"],
                },
                "spec": deployment["spec"]["template"]["spec"],
            }));
        }
    }

    // A real install (the processes run outside the test bed, so no replicas), then an
    // upgrade that must keep the self-signed CA. Its uninstall runs the drain hook's Job,
    // which kwok completes without running a container (its command is exercised by the
    // controller scenario draining_before_an_uninstall…, its permissions by the checks
    // below: the controller's account patches its nodes and evicts pods).
    let scale_to_zero = [
        "--set",
        "webhook.replicas=0",
        "--set",
        "controller.replicas=0",
    ];
    let mut install = vec![
        "install",
        "spillway-e2e",
        &chart,
        "--namespace",
        namespace,
        "--wait",
        "--timeout",
        "60s",
    ];
    install.extend(scale_to_zero);
    install.extend([
        "--values",
        &eks_values,
        "--set",
        "controller.providers={fargate,mock}",
    ]);
    helm(&install)?;
    let ca = |_: ()| -> anyhow::Result<(String, String)> {
        let secret = kubectl(&[
            "-n",
            namespace,
            "get",
            "secret",
            "spillway-e2e-webhook-tls",
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ])?;
        let bundle = kubectl(&[
            "get",
            "mutatingwebhookconfiguration",
            "spillway-e2e",
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ])?;
        Ok((secret, bundle))
    };
    let (secret_ca, bundle) = ca(())?;
    assert!(!secret_ca.is_empty());
    assert_eq!(secret_ca, bundle, "the webhook trusts the CA in its Secret");
    let dir = tempfile::tempdir()?;
    for pod in &pods {
        let path = values_file(dir.path(), "pod.json", &pod.to_string())?;
        let created = kubectl(&[
            "create",
            "--dry-run=server",
            "-f",
            &path.display().to_string(),
        ]);
        assert!(created.is_ok(), "{}: {created:?}", pod["metadata"]["name"]);
    }
    let mut upgrade = vec![
        "upgrade",
        "spillway-e2e",
        &chart,
        "--namespace",
        namespace,
        "--wait",
        "--timeout",
        "60s",
    ];
    upgrade.extend(scale_to_zero);
    upgrade.extend([
        "--values",
        &eks_values,
        "--set",
        "controller.providers={fargate,mock}",
        "--set-json",
        "config.capacityThreshold=0.9",
    ]);
    helm(&upgrade)?;
    assert_eq!(
        ca(())?,
        (secret_ca.clone(), bundle),
        "the upgrade kept the CA"
    );
    let config = kubectl(&[
        "-n",
        namespace,
        "get",
        "configmap",
        "spillway-e2e-config",
        "-o",
        "jsonpath={.data.config\\.yaml}",
    ])?;
    assert!(config.contains("capacityThreshold: 0.9"), "{config}");

    // Least privilege, as the apiserver's RBAC sees it.
    let webhook = "spillway-e2e-webhook";
    let controller = "spillway-e2e-controller";
    let checks: &[(&str, &str, &str, Option<&str>, bool)] = &[
        // The webhook only reads what its index needs.
        (webhook, "watch", "pods", None, true),
        (webhook, "list", "nodes", None, true),
        (webhook, "watch", "deployments.apps", None, true),
        (
            webhook,
            "list",
            "horizontalpodautoscalers.autoscaling",
            None,
            true,
        ),
        (webhook, "patch", "pods", Some("default"), false),
        (webhook, "get", "secrets", Some("default"), false),
        (
            webhook,
            "create",
            "pods --subresource=eviction",
            Some("default"),
            false,
        ),
        (
            webhook,
            "update",
            "leases.coordination.k8s.io",
            Some(namespace),
            false,
        ),
        // The controller: patch pods, evict, Events; its own Leases, here only.
        (controller, "patch", "pods", Some("default"), true),
        (
            controller,
            "create",
            "pods --subresource=eviction",
            Some("default"),
            true,
        ),
        (
            controller,
            "create",
            "events.events.k8s.io",
            Some("default"),
            true,
        ),
        (
            controller,
            "delete",
            "deployments.apps",
            Some("default"),
            false,
        ),
        // Backfill placeholders (backfill.mode auto, the default).
        (controller, "create", "pods", Some("default"), true),
        (
            controller,
            "update",
            "leases.coordination.k8s.io/spillway-controller",
            Some(namespace),
            true,
        ),
        (
            controller,
            "update",
            "leases.coordination.k8s.io/someone-else",
            Some(namespace),
            false,
        ),
        (
            controller,
            "update",
            "leases.coordination.k8s.io/spillway-controller",
            Some("kube-system"),
            false,
        ),
        // Its virtual nodes: their own Node objects and heartbeats, by name.
        (controller, "patch", "nodes/spillway-fargate", None, true),
        (
            controller,
            "patch",
            "nodes/spillway-mock --subresource=status",
            None,
            true,
        ),
        (
            controller,
            "patch",
            "nodes/kwok-node-0 --subresource=status",
            None,
            false,
        ),
        (controller, "patch", "nodes/kwok-node-0", None, false),
        (controller, "delete", "nodes/spillway-fargate", None, false),
        (
            controller,
            "patch",
            "leases.coordination.k8s.io/spillway-fargate",
            Some("kube-node-lease"),
            true,
        ),
        (
            controller,
            "patch",
            "leases.coordination.k8s.io/kwok-node-0",
            Some("kube-node-lease"),
            false,
        ),
        // Secrets by name only, never listed or watched; never written.
        (controller, "get", "secrets", Some("default"), true),
        (controller, "list", "secrets", Some("default"), false),
        (controller, "watch", "secrets", None, false),
        (controller, "create", "secrets", Some("default"), false),
        (controller, "delete", "pods", Some("default"), true),
        (
            controller,
            "patch",
            "pods --subresource=status",
            Some("default"),
            true,
        ),
        // It authorizes kubelet API callers with SubjectAccessReviews ...
        (
            controller,
            "create",
            "subjectaccessreviews.authorization.k8s.io",
            None,
            true,
        ),
        (
            webhook,
            "create",
            "subjectaccessreviews.authorization.k8s.io",
            None,
            false,
        ),
        // ... and authenticates bearer tokens with TokenReviews.
        (
            controller,
            "create",
            "tokenreviews.authentication.k8s.io",
            None,
            true,
        ),
        (
            webhook,
            "create",
            "tokenreviews.authentication.k8s.io",
            None,
            false,
        ),
    ];
    let mut wrong = Vec::new();
    for (account, verb, what, in_ns, expected) in checks {
        let allowed = can_i(account, namespace, verb, what, *in_ns)?;
        if allowed != *expected {
            wrong.push(format!(
                "{account} {verb} {what} in {in_ns:?}: allowed={allowed}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "RBAC differs from what is needed:\n{}",
        wrong.join("\n")
    );
    // The uninstall waits for its drain hook (the Job, completed by kwok) and succeeds.
    let uninstall = helm_output(&[
        "uninstall",
        &release.name,
        "--namespace",
        &release.namespace,
        "--wait",
        "--timeout",
        "120s",
    ])?;
    assert!(
        uninstall.status.success(),
        "{}",
        String::from_utf8_lossy(&uninstall.stderr)
    );
    drop(release);
    Ok(())
}

/// The metrics docs/metrics.md lists, from its tables.
fn documented_metrics() -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(repo_root().join("docs/metrics.md"))?;
    let mut names: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("| `spillway_") || l.starts_with("Every process: "))
        .flat_map(|l| l.split('`'))
        .filter(|word| word.starts_with("spillway_") && !word.contains(['{', ' ']))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

#[test]
fn the_dashboard_shows_every_metric_filtered_by_cluster_namespace_and_workload()
-> anyhow::Result<()> {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(
        chart_dir().join("files/dashboard.json"),
    )?)?;
    let panels = dashboard["panels"].as_array().context("panels")?;
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    // Every documented metric has a panel.
    let metrics = documented_metrics()?;
    assert!(metrics.len() >= 35, "{metrics:?}");
    for metric in &metrics {
        assert!(
            exprs.iter().any(|e| e.contains(metric.as_str())),
            "no panel shows {metric}"
        );
    }
    // Cluster, namespace and workload variables, and every query honours them.
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for name in ["datasource", "cluster", "namespace", "workload"] {
        assert!(
            variables.contains(&name),
            "no ${name} variable: {variables:?}"
        );
    }
    let per_workload = [
        "spillway_workload_replicas",
        "spillway_burst_ratio",
        "spillway_burst_cost_usd_per_hour{",
        "spillway_burst_pods",
        "spillway_oldest_burst_seconds",
        "spillway_workload_max_local",
        "spillway_burst_usd_total",
        "spillway_unadmitted_pods_total",
    ];
    for expr in &exprs {
        assert!(expr.contains("cluster=~\"$cluster\""), "{expr}");
        let whole_cluster = expr.starts_with("sum(spillway_burst_cost_usd_per_hour{cluster");
        if per_workload.iter().any(|m| expr.contains(m)) && !whole_cluster {
            assert!(
                expr.contains("$namespace") && expr.contains("$workload"),
                "{expr}"
            );
        }
    }
    // A top row of stats.
    let top: Vec<&Value> = panels.iter().filter(|p| p["gridPos"]["y"] == 0).collect();
    assert!(top.len() >= 6 && top.iter().all(|p| p["type"] == "stat"));
    // Threshold lines over the utilization they apply to, drawn dashed.
    let utilization = panels
        .iter()
        .find(|p| {
            p["targets"]
                .to_string()
                .contains("spillway_cluster_request_utilization")
        })
        .context("a utilization panel")?;
    let targets = utilization["targets"].to_string();
    for name in ["capacity", "rebalance_below"] {
        assert!(
            targets.contains(&format!("spillway_config_threshold{{name=\\\"{name}\\\"")),
            "{targets}"
        );
    }
    assert!(
        utilization["fieldConfig"]["overrides"]
            .to_string()
            .contains("dash")
    );
    // Ids are unique and no two panels overlap on the grid.
    let mut ids: Vec<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), panels.len());
    let cells = |p: &Value| -> Vec<(u64, u64)> {
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap_or(0),
            g["y"].as_u64().unwrap_or(0),
            g["w"].as_u64().unwrap_or(0),
            g["h"].as_u64().unwrap_or(0),
        );
        (x..x + w)
            .flat_map(|cx| (y..y + h).map(move |cy| (cx, cy)))
            .collect()
    };
    let mut taken = std::collections::HashSet::new();
    for panel in panels {
        assert!(
            panel["gridPos"]["x"].as_u64().unwrap_or(0)
                + panel["gridPos"]["w"].as_u64().unwrap_or(0)
                <= 24
        );
        for cell in cells(panel) {
            assert!(
                taken.insert(cell),
                "{} overlaps another panel",
                panel["title"]
            );
        }
    }
    Ok(())
}
