//! The ACI provider's requests against the official ACI REST spec (api-version 2023-05-01,
//! copied unchanged into `vk-node/tests/aci-spec/`): every container-group body the translation
//! builds validates against the spec's `Resource` and `ContainerGroupProperties` schemas
//! with unknown and read-only fields refused, and the official examples parse into the
//! provider's types and serialize back unchanged.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use spillway_common::config::PricingConfig;
use spillway_e2e::aci_spec::{body_violations, read_json, spec_dir, strict_definitions};
use spillway_vk_node::aci::arm_types::{ContainerGroup, ImageRegistryCredential};
use spillway_vk_node::aci::translate::{
    AciLookup, AciSettings, TranslateError, VolumeFiles, VolumeKind, translate, valid_group_name,
};
use spillway_vk_node::env::{EnvLookup, Placeholders};

/// A cluster where every object the pods name exists.
struct Cluster;

impl EnvLookup for Cluster {
    fn config_map_value(&self, name: &str, key: &str) -> Option<String> {
        Some(format!("{name}/{key}"))
    }
    fn config_map_entries(&self, name: &str) -> Option<Vec<(String, String)>> {
        Some(vec![("FROM_MAP".into(), format!("{name}-value"))])
    }
    fn secret_keys(&self, _: &str) -> Option<Vec<String>> {
        Some(vec!["token".into()])
    }
}

impl AciLookup for Cluster {
    fn secret_value(&self, name: &str, key: &str) -> Option<String> {
        (name != "absent").then(|| format!("s3cr3t-{name}-{key}"))
    }
    fn volume_files(&self, _: VolumeKind, name: &str) -> VolumeFiles {
        VolumeFiles::Found(BTreeMap::from([(
            "app.conf".to_owned(),
            format!("from {name}").into_bytes(),
        )]))
    }
    fn registry_credentials(&self, _: &str) -> Option<Vec<ImageRegistryCredential>> {
        Some(vec![ImageRegistryCredential {
            server: "registry.example.com".into(),
            username: Some("puller".into()),
            password: Some("hunter2".into()),
            ..ImageRegistryCredential::default()
        }])
    }
}

fn pod(spec: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web-7d9f8b6c5-x2x4q", "namespace": "shop",
            "uid": "0f8e1f52-3b1c-4a7e-9d55-2f0b8c1e9a10", "labels": {"app": "web"}},
        "spec": spec,
    }))
    .unwrap()
}

/// Pods that exercise every part of the translation.
fn pods() -> Vec<Pod> {
    vec![
        pod(json!({"containers": [{"name": "app", "image": "nginx:1.27"}]})),
        pod(json!({
            "restartPolicy": "OnFailure",
            "imagePullSecrets": [{"name": "regcred"}],
            "initContainers": [{"name": "migrate", "image": "example.com/migrate:1", "command": ["/migrate"],
                "env": [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
                {"name": "proxy", "image": "envoyproxy/envoy:v1.31", "restartPolicy": "Always",
                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}],
            "containers": [
                {"name": "web", "image": "nginx:1.27", "command": ["nginx"], "args": ["-g", "daemon off;"],
                 "ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}],
                 "resources": {"requests": {"cpu": "333m", "memory": "1.5Gi"}, "limits": {"cpu": "2", "memory": "3Gi"}},
                 "envFrom": [{"configMapRef": {"name": "settings"}}, {"prefix": "API_", "secretRef": {"name": "api"}}],
                 "env": [
                    {"name": "MODE", "value": "prod"},
                    {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "level"}}},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                    {"name": "OPTIONAL", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "x", "optional": true}}}
                 ],
                 "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"},
                                  {"name": "conf", "mountPath": "/etc/app", "readOnly": true},
                                  {"name": "certs", "mountPath": "/certs"}]},
                {"name": "sidecar", "image": "busybox", "args": ["sleep", "3600"],
                 "livenessProbe": {"exec": {"command": ["cat", "/tmp/alive"]}, "periodSeconds": 5,
                    "failureThreshold": 2},
                 "readinessProbe": {"httpGet": {"port": 8080}},
                 "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}}
            ],
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "conf", "configMap": {"name": "app-conf"}},
                {"name": "certs", "secret": {"secretName": "tls", "items": [{"key": "tls.crt", "path": "tls.crt"}]}},
                {"name": "kube-api-access-abcde", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}
            ]
        })),
        pod(json!({"restartPolicy": "Never", "containers": [
            {"name": "a", "image": "busybox", "resources": {"limits": {"cpu": "4", "memory": "16Gi"}}}
        ]})),
    ]
}

#[test]
fn every_translated_body_validates_against_the_official_spec() {
    let definitions = strict_definitions();
    let settings = AciSettings::offline(PricingConfig::default().aci);
    for pod in pods() {
        for lookup in [&Cluster as &dyn AciLookup, &Placeholders] {
            let request = translate(&pod, &settings, lookup).unwrap();
            let body = serde_json::to_value(&request.group).unwrap();
            let problems = body_violations(&definitions, &body);
            assert!(problems.is_empty(), "{problems:#?}\n{body:#}");
            assert!(valid_group_name(&request.name), "{}", request.name);
        }
    }
}

#[test]
fn the_validator_refuses_unknown_and_read_only_fields() {
    let definitions = strict_definitions();
    let settings = AciSettings::offline(PricingConfig::default().aci);
    let request = translate(&pods()[0], &settings, &Cluster).unwrap();
    let mut body = serde_json::to_value(&request.group).unwrap();
    body["properties"]["containers"][0]["properties"]["args"] = json!(["x"]);
    assert!(
        !body_violations(&definitions, &body).is_empty(),
        "an unknown field passed"
    );
    let mut body = serde_json::to_value(&request.group).unwrap();
    body["properties"]["provisioningState"] = json!("Succeeded");
    assert!(
        !body_violations(&definitions, &body).is_empty(),
        "a read-only field passed"
    );
    let mut body = serde_json::to_value(&request.group).unwrap();
    body["properties"]["osType"] = json!("Plan9");
    assert!(
        !body_violations(&definitions, &body).is_empty(),
        "a value outside the enum passed"
    );
}

#[test]
fn secrets_reach_aci_only_as_secure_values() {
    let settings = AciSettings::offline(PricingConfig::default().aci);
    let request = translate(&pods()[1], &settings, &Cluster).unwrap();
    let body = serde_json::to_value(&request.group).unwrap();
    let text = body.to_string();
    let mut secure = Vec::new();
    let containers = body["properties"]["containers"].as_array().unwrap().iter();
    let init = body["properties"]["initContainers"]
        .as_array()
        .unwrap()
        .iter();
    for container in containers.chain(init) {
        for var in container["properties"]["environmentVariables"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(value) = var["value"].as_str() {
                assert!(
                    !value.contains("s3cr3t"),
                    "a secret in a plain value: {var}"
                );
            }
            if let Some(value) = var["secureValue"].as_str() {
                secure.push((var["name"].as_str().unwrap().to_owned(), value.to_owned()));
            }
        }
    }
    secure.sort();
    assert_eq!(
        secure,
        vec![
            ("API_token".to_owned(), "s3cr3t-api-token".to_owned()),
            ("DB_PASSWORD".to_owned(), "s3cr3t-db-password".to_owned()),
        ]
    );
    assert_eq!(text.matches("s3cr3t").count(), 2, "nowhere else: {text}");
    // A required Secret that does not exist stops the create; an optional one is skipped.
    let mut needs_absent = pods()[0].clone();
    needs_absent.spec.as_mut().unwrap().containers[0].env = Some(vec![
        serde_json::from_value(
            json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "x"}}}),
        )
        .unwrap(),
    ]);
    assert_eq!(
        translate(&needs_absent, &settings, &Cluster).unwrap_err(),
        TranslateError::MissingSecret {
            name: "absent".into(),
            key: "x".into()
        }
    );
}

#[test]
fn sizes_names_and_the_rest_of_the_group() {
    let settings = AciSettings::offline(PricingConfig::default().aci);
    let request = translate(&pods()[1], &settings, &Cluster).unwrap();
    let group = &request.group.properties;
    let web = &group.containers[0].properties;
    assert_eq!(
        (
            web.resources.requests.cpu,
            web.resources.requests.memory_in_gb
        ),
        (0.34, 1.5)
    );
    let limits = web.resources.limits.as_ref().unwrap();
    assert_eq!((limits.cpu, limits.memory_in_gb), (Some(2.0), Some(3.0)));
    let sidecar = &group.containers[1].properties;
    assert_eq!(
        (
            sidecar.resources.requests.cpu,
            sidecar.resources.requests.memory_in_gb
        ),
        (0.05, 0.1)
    );
    // The native sidecar runs beside the app as a regular container of the group; the
    // classic init container stays one.
    let names: Vec<&str> = group.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["web", "sidecar", "proxy"]);
    let init: Vec<&str> = group
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, ["migrate"]);
    // Its exec liveness probe is ACI's to run; its HTTP readiness probe the node's.
    let probe = sidecar.liveness_probe.as_ref().expect("a liveness probe");
    assert_eq!(probe["exec"]["command"], json!(["cat", "/tmp/alive"]));
    assert_eq!(
        (
            probe["periodSeconds"].clone(),
            probe["failureThreshold"].clone()
        ),
        (json!(5), json!(2))
    );
    assert!(sidecar.readiness_probe.is_none());
    assert_eq!((request.size.vcpu, request.size.gb), (0.49, 1.8));
    assert_eq!(
        web.command.as_deref(),
        Some(&["nginx".to_owned(), "-g".into(), "daemon off;".into()][..])
    );
    assert_eq!(group.restart_policy.as_deref(), Some("OnFailure"));
    assert_eq!(group.os_type, "Linux");
    let ip = group.ip_address.as_ref().unwrap();
    assert_eq!(ip.address_type, "Private");
    assert_eq!(ip.ports.len(), 2);
    assert_eq!(
        group.subnet_ids.as_ref().unwrap()[0].id,
        settings.subnet_ids[0]
    );
    assert_eq!(
        group.image_registry_credentials.as_ref().unwrap()[0].server,
        "registry.example.com"
    );
    let volumes = group.volumes.as_ref().unwrap();
    assert_eq!(
        volumes.len(),
        3,
        "the token volume is not carried: {volumes:?}"
    );
    let conf = volumes.iter().find(|v| v.name == "conf").unwrap();
    assert_eq!(
        conf.secret.as_ref().unwrap()["app.conf"],
        "ZnJvbSBhcHAtY29uZg=="
    );
    assert!(
        request.notes.iter().any(|n| n.contains("kube-api-access")),
        "{:?}",
        request.notes
    );
    assert!(
        request.notes.iter().any(|n| n.contains("sidecar")),
        "args without command noted: {:?}",
        request.notes
    );
    let tags = request.group.tags.as_ref().unwrap();
    assert_eq!(
        tags["spillway.io-pod-uid"],
        "0f8e1f52-3b1c-4a7e-9d55-2f0b8c1e9a10"
    );
    assert_eq!(tags["spillway.io-node"], "spillway-aci");
    assert!(
        request.name.starts_with("shop-web-7d9f8b6c5-x2x4q-"),
        "{}",
        request.name
    );

    // A pod that names no resources gets the default; the Never policy carries over.
    let bare = translate(&pods()[0], &settings, &Cluster).unwrap();
    let requests = &bare.group.properties.containers[0]
        .properties
        .resources
        .requests;
    assert_eq!((requests.cpu, requests.memory_in_gb), (0.25, 0.5));
    let never = translate(&pods()[2], &settings, &Cluster).unwrap();
    assert_eq!(
        never.group.properties.restart_policy.as_deref(),
        Some("Never")
    );
    assert_eq!((never.size.vcpu, never.size.gb), (4.0, 16.0));
}

/// Numbers as f64, so `1` and `1.0` compare equal after a round trip.
fn normalized(value: &Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64().unwrap()),
        Value::Array(items) => Value::Array(items.iter().map(normalized).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), normalized(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[test]
fn the_official_examples_parse_into_the_types_and_back() {
    let examples = spec_dir().join("examples");
    let mut groups = Vec::new();
    let create = read_json(
        &examples.join("ContainerGroups_CreateOrUpdate_Container_Groups_Create_Or_Update.json"),
    );
    groups.push(create["parameters"]["containerGroup"].clone());
    for (_, response) in create["responses"].as_object().unwrap() {
        groups.push(response["body"].clone());
    }
    for file in [
        "ContainerGroups_Get_Container_Groups_Get_Succeeded.json",
        "ContainerGroups_Get_Container_Groups_Get_Failed.json",
    ] {
        let example = read_json(&examples.join(file));
        groups.push(example["responses"]["200"]["body"].clone());
    }
    let list = read_json(&examples.join("ContainerGroups_List.json"));
    groups.extend(
        list["responses"]["200"]["body"]["value"]
            .as_array()
            .unwrap()
            .iter()
            .cloned(),
    );
    assert!(groups.len() >= 5);
    for original in groups {
        let parsed: ContainerGroup = serde_json::from_value(original.clone())
            .unwrap_or_else(|e| panic!("{e}: {original:#}"));
        let back = serde_json::to_value(&parsed).unwrap();
        assert_eq!(normalized(&back), normalized(&original));
    }
    // The create request itself passes the strict validator (which the tests above rely on).
    let definitions = strict_definitions();
    let problems = body_violations(&definitions, &create["parameters"]["containerGroup"]);
    assert!(problems.is_empty(), "{problems:#?}");
}
