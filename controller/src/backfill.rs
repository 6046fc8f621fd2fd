//! Backfill against the apiserver: reads what Spillway's requests are now (before each
//! pass, so a new leader adopts its predecessor's) and carries out the backfill actions —
//! a `CapacityBuffer` per workload, or low-priority placeholder pods, and the
//! Deployment's `spillway.io/backfill` mark the webhook's decision reads.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, PodSpec, Toleration};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;
use spillway_common::keys;
use spillway_common::pod_resources::PodResources;

use crate::execute::FIELD_MANAGER;
use crate::plan::{BackfillKind, BackfillObserved};
use crate::snapshot::tolerates_virtual_node_taint;

/// API group of `CapacityBuffer` (Karpenter, Cluster Autoscaler).
pub const CAPACITY_BUFFER_GROUP: &str = "autoscaling.x-k8s.io";
/// The version Karpenter v1.15 serves.
pub const CAPACITY_BUFFER_VERSION: &str = "v1beta1";
/// How long the answer to "does the cluster serve CapacityBuffer?" is kept: a CRD
/// installed later is picked up within a minute.
const DISCOVERY_TTL: Duration = Duration::from_secs(60);
/// Longest name a placeholder or buffer takes from its Deployment's name.
const NAME_PREFIX_MAX: usize = 40;

/// What a backfill call failed at.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// Reading the Deployment whose pod template shapes the placeholders.
    #[error("read deployment {0}: {1}")]
    ReadDeployment(String, kube::Error),
    /// Creating Spillway's placeholder PriorityClass.
    #[error("create priority class spillway-placeholder: {0}")]
    CreatePriorityClass(kube::Error),
    /// Creating, listing or deleting placeholder pods.
    #[error("placeholder pods of {0}: {1}")]
    Placeholders(String, kube::Error),
    /// Applying or deleting a CapacityBuffer.
    #[error("capacity buffer of {0}: {1}")]
    CapacityBuffer(String, kube::Error),
    /// Writing the Deployment's `spillway.io/backfill` mark.
    #[error("mark deployment {0}: {1}")]
    Mark(String, kube::Error),
    /// Placeholders were asked for without an image to run.
    #[error(
        "backfill.placeholderImage is not set; placeholders mode needs an image to run (the chart sets Spillway's own)"
    )]
    NoPlaceholderImage,
}

fn split(workload: &str) -> (&str, &str) {
    workload.split_once('/').unwrap_or(("default", workload))
}

/// Name of the CapacityBuffer (and the prefix of the placeholders) of Deployment `name`.
pub fn object_name(name: &str) -> String {
    let prefix: String = name.chars().take(NAME_PREFIX_MAX).collect();
    format!("spillway-backfill-{}", prefix.trim_end_matches(['-', '.']))
}

fn capacity_buffer_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            CAPACITY_BUFFER_GROUP,
            CAPACITY_BUFFER_VERSION,
            "CapacityBuffer",
        ),
        "capacitybuffers",
    )
}

/// Label selector of Spillway's backfill objects: all of them, or those of Deployment
/// `name` (in the namespace listed).
fn backfill_selector(name: Option<&str>) -> String {
    let owner = match name {
        Some(name) => format!("{}={name}", keys::BACKFILL_FOR),
        None => keys::BACKFILL_FOR.to_owned(),
    };
    format!("app.kubernetes.io/managed-by={},{owner}", keys::MANAGED_BY)
}

/// Reads and carries out backfill.
pub struct Backfill {
    client: Client,
    served: std::sync::Mutex<Option<(bool, Instant)>>,
}

impl Backfill {
    /// Backfill through `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            served: std::sync::Mutex::new(None),
        }
    }

    /// Whether the cluster serves CapacityBuffer (asked of discovery at most once a
    /// minute; an error counts as "not served" until the next ask).
    async fn capacity_buffer_served(&self) -> bool {
        let cached = *self.served.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((served, at)) = cached
            && at.elapsed() < DISCOVERY_TTL
        {
            return served;
        }
        let served = match self
            .client
            .list_api_group_resources(&format!(
                "{CAPACITY_BUFFER_GROUP}/{CAPACITY_BUFFER_VERSION}"
            ))
            .await
        {
            Ok(list) => list.resources.iter().any(|r| r.name == "capacitybuffers"),
            Err(kube::Error::Api(status)) if status.code == 404 => false,
            Err(error) => {
                tracing::debug!(%error, "discovery of CapacityBuffer failed; treated as not served");
                false
            }
        };
        *self.served.lock().unwrap_or_else(|p| p.into_inner()) = Some((served, Instant::now()));
        served
    }

    /// What Spillway's requests in the cluster are now.
    pub async fn observe(&self) -> Result<BackfillObserved, BackfillError> {
        let mut observed = BackfillObserved {
            capacity_buffer_served: self.capacity_buffer_served().await,
            existing: BTreeMap::new(),
        };
        let params = ListParams::default().labels(&backfill_selector(None));
        let pods: Api<Pod> = Api::all(self.client.clone());
        let list = pods
            .list_metadata(&params)
            .await
            .map_err(|e| BackfillError::Placeholders("*".into(), e))?;
        for pod in list.items {
            let meta = pod.metadata;
            let (Some(ns), Some(owner)) = (
                meta.namespace,
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(keys::BACKFILL_FOR))
                    .cloned(),
            ) else {
                continue;
            };
            if meta.deletion_timestamp.is_some() {
                continue;
            }
            *observed
                .existing
                .entry((format!("{ns}/{owner}"), BackfillKind::Placeholders))
                .or_default() += 1;
        }
        if observed.capacity_buffer_served {
            let buffers: Api<DynamicObject> =
                Api::all_with(self.client.clone(), &capacity_buffer_resource());
            let list = buffers
                .list(&params)
                .await
                .map_err(|e| BackfillError::CapacityBuffer("*".into(), e))?;
            for buffer in list.items {
                let (Some(ns), Some(owner)) = (
                    buffer.metadata.namespace.clone(),
                    buffer
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(keys::BACKFILL_FOR))
                        .cloned(),
                ) else {
                    continue;
                };
                let replicas = buffer.data["spec"]["replicas"].as_u64().unwrap_or(0) as u32;
                observed.existing.insert(
                    (format!("{ns}/{owner}"), BackfillKind::CapacityBuffer),
                    replicas,
                );
            }
        }
        Ok(observed)
    }

    /// Makes `workload`'s request of `kind` hold `replicas` pods of `needs` (placeholders
    /// run `image`), and marks the Deployment.
    pub async fn request(
        &self,
        workload: &str,
        uid: &str,
        kind: BackfillKind,
        replicas: u32,
        needs: &PodResources,
        image: Option<&str>,
    ) -> Result<(), BackfillError> {
        match kind {
            BackfillKind::CapacityBuffer => self.apply_buffer(workload, uid, replicas).await?,
            BackfillKind::Placeholders => {
                self.size_placeholders(workload, uid, replicas, needs, image)
                    .await?
            }
        }
        self.mark(workload, Some(replicas)).await
    }

    /// Deletes `workload`'s request of `kind`.
    pub async fn withdraw(&self, workload: &str, kind: BackfillKind) -> Result<(), BackfillError> {
        let (namespace, name) = split(workload);
        match kind {
            BackfillKind::CapacityBuffer => {
                let buffers: Api<DynamicObject> = Api::namespaced_with(
                    self.client.clone(),
                    namespace,
                    &capacity_buffer_resource(),
                );
                match buffers
                    .delete(&object_name(name), &DeleteParams::default())
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                    Err(error) => Err(BackfillError::CapacityBuffer(workload.into(), error)),
                }
            }
            BackfillKind::Placeholders => {
                let pods = self.placeholders(workload).await?;
                self.delete_pods(workload, pods.iter().map(String::as_str))
                    .await
            }
        }
    }

    /// Removes the Deployment's mark (every replica is home).
    pub async fn unmark(&self, workload: &str) -> Result<(), BackfillError> {
        self.mark(workload, None).await
    }

    async fn mark(&self, workload: &str, replicas: Option<u32>) -> Result<(), BackfillError> {
        let (namespace, name) = split(workload);
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        let value = replicas.map(|r| r.to_string());
        let patch = json!({"metadata": {"annotations": {keys::BACKFILL: value}}});
        match deployments
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 && replicas.is_none() => Ok(()),
            Err(error) => Err(BackfillError::Mark(workload.into(), error)),
        }
    }

    async fn apply_buffer(
        &self,
        workload: &str,
        uid: &str,
        replicas: u32,
    ) -> Result<(), BackfillError> {
        let (namespace, name) = split(workload);
        let buffers: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &capacity_buffer_resource());
        let buffer = json!({
            "apiVersion": format!("{CAPACITY_BUFFER_GROUP}/{CAPACITY_BUFFER_VERSION}"),
            "kind": "CapacityBuffer",
            "metadata": {
                "name": object_name(name),
                "namespace": namespace,
                "labels": {
                    "app.kubernetes.io/managed-by": keys::MANAGED_BY,
                    keys::BACKFILL_FOR: name,
                },
                "ownerReferences": [owner_reference(name, uid)],
            },
            "spec": {
                "scalableRef": {"apiGroup": "apps", "kind": "Deployment", "name": name},
                "replicas": replicas,
            }
        });
        buffers
            .patch(
                &object_name(name),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(buffer),
            )
            .await
            .map_err(|e| BackfillError::CapacityBuffer(workload.into(), e))?;
        Ok(())
    }

    /// Names of `workload`'s placeholder pods that are not being deleted, oldest first.
    async fn placeholders(&self, workload: &str) -> Result<Vec<String>, BackfillError> {
        let (namespace, name) = split(workload);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = ListParams::default().labels(&backfill_selector(Some(name)));
        let mut list: Vec<_> = pods
            .list_metadata(&params)
            .await
            .map_err(|e| BackfillError::Placeholders(workload.into(), e))?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        list.sort_by(|a, b| {
            (
                a.metadata.creation_timestamp.as_ref().map(|t| t.0),
                &a.metadata.name,
            )
                .cmp(&(
                    b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    &b.metadata.name,
                ))
        });
        Ok(list.into_iter().filter_map(|p| p.metadata.name).collect())
    }

    async fn delete_pods<'a>(
        &self,
        workload: &str,
        names: impl Iterator<Item = &'a str>,
    ) -> Result<(), BackfillError> {
        let (namespace, _) = split(workload);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        for name in names {
            match pods
                .delete(name, &DeleteParams::default().grace_period(0))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(BackfillError::Placeholders(workload.into(), error)),
            }
        }
        Ok(())
    }

    async fn size_placeholders(
        &self,
        workload: &str,
        uid: &str,
        replicas: u32,
        needs: &PodResources,
        image: Option<&str>,
    ) -> Result<(), BackfillError> {
        let existing = self.placeholders(workload).await?;
        let want = replicas as usize;
        if existing.len() > want {
            // The newest go first: the oldest are the likeliest to hold a node already.
            return self
                .delete_pods(workload, existing[want..].iter().map(String::as_str))
                .await;
        }
        if existing.len() == want {
            return Ok(());
        }
        let image = image.ok_or(BackfillError::NoPlaceholderImage)?;
        self.ensure_priority_class().await?;
        let (namespace, name) = split(workload);
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        let deployment = deployments
            .get(name)
            .await
            .map_err(|e| BackfillError::ReadDeployment(workload.into(), e))?;
        let template = deployment.spec.template.spec.unwrap_or_default();
        let pod = placeholder_pod(name, uid, &template, needs, image);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        for _ in existing.len()..want {
            pods.create(&PostParams::default(), &pod)
                .await
                .map_err(|e| BackfillError::Placeholders(workload.into(), e))?;
        }
        Ok(())
    }

    async fn ensure_priority_class(&self) -> Result<(), BackfillError> {
        let classes: Api<PriorityClass> = Api::all(self.client.clone());
        let class = PriorityClass {
            metadata: kube::api::ObjectMeta {
                name: Some(keys::PLACEHOLDER_PRIORITY_CLASS.into()),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_owned(),
                        keys::MANAGED_BY.to_owned(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            value: Some(keys::PLACEHOLDER_PRIORITY),
            global_default: Some(false),
            preemption_policy: Some("Never".into()),
            description: Some(
                "Spillway's backfill placeholders: below every real pod, so any pod preempts them"
                    .into(),
            ),
        };
        match classes.create(&PostParams::default(), &class).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(error) => Err(BackfillError::CreatePriorityClass(error)),
        }
    }
}

fn owner_reference(name: &str, uid: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": name,
        "uid": uid,
        "blockOwnerDeletion": false,
    })
}

/// A placeholder of Deployment `name`: the burst pods' requests, the template's node
/// selector, affinity and tolerations (never one that lets it onto a virtual node), the
/// negative PriorityClass, and a pause process.
pub fn placeholder_pod(
    name: &str,
    uid: &str,
    template: &PodSpec,
    needs: &PodResources,
    image: &str,
) -> Pod {
    let mut requests = serde_json::Map::new();
    if needs.cpu_millis > 0 {
        requests.insert("cpu".into(), json!(format!("{}m", needs.cpu_millis)));
    }
    if needs.memory_bytes > 0 {
        requests.insert("memory".into(), json!(needs.memory_bytes.to_string()));
    }
    let tolerations: Vec<&Toleration> = template
        .tolerations
        .iter()
        .flatten()
        .filter(|t| !tolerates_virtual_node_taint(t))
        .collect();
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("{}-", object_name(name)),
            "labels": {
                "app.kubernetes.io/managed-by": keys::MANAGED_BY,
                keys::BACKFILL_FOR: name,
            },
            "ownerReferences": [owner_reference(name, uid)],
        },
        "spec": {
            "priorityClassName": keys::PLACEHOLDER_PRIORITY_CLASS,
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "nodeSelector": template.node_selector,
            "affinity": template.affinity,
            "tolerations": tolerations,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532},
            "containers": [{
                "name": "placeholder",
                "image": image,
                "args": ["pause"],
                "resources": {"requests": requests, "limits": requests},
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]},
                },
            }],
        }
    });
    serde_json::from_value(pod).expect("the placeholder pod is a valid Pod")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_keep_the_templates_constraints_but_never_tolerate_the_virtual_node() {
        let template: PodSpec = serde_json::from_value(json!({
            "containers": [{"name": "app", "image": "app"}],
            "nodeSelector": {"pool": "general"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"},
                {"operator": "Exists"},
                {"key": "virtual-kubelet.io/provider", "operator": "Exists"}
            ]
        }))
        .unwrap();
        let needs = PodResources {
            cpu_millis: 1500,
            memory_bytes: 2 << 30,
            cpu_specified: true,
            memory_specified: true,
        };
        let pod = placeholder_pod("web", "d1", &template, &needs, "spillway:1");
        assert!(
            pod.metadata
                .labels
                .as_ref()
                .unwrap()
                .contains_key(keys::BACKFILL_FOR)
        );
        let spec = pod.spec.unwrap();
        assert_eq!(
            spec.priority_class_name.as_deref(),
            Some("spillway-placeholder")
        );
        assert_eq!(spec.node_selector.unwrap()["pool"], "general");
        let tolerations = spec.tolerations.unwrap();
        assert_eq!(tolerations.len(), 1);
        assert_eq!(tolerations[0].key.as_deref(), Some("dedicated"));
        let requests = spec.containers[0]
            .resources
            .as_ref()
            .unwrap()
            .requests
            .clone()
            .unwrap();
        assert_eq!(requests["cpu"].0, "1500m");
        assert_eq!(requests["memory"].0, (2u64 << 30).to_string());
        assert_eq!(
            spillway_common::pod_resources::effective(&PodSpec {
                containers: spec.containers.clone(),
                ..PodSpec::default()
            })
            .cpu_millis,
            1500
        );
        assert_eq!(pod.metadata.owner_references.unwrap()[0].uid, "d1");
    }

    #[test]
    fn object_names_stay_short_and_valid() {
        assert_eq!(object_name("web"), "spillway-backfill-web");
        let long = object_name(&"a-".repeat(60));
        assert!(long.len() <= 18 + NAME_PREFIX_MAX, "{long}");
        assert!(!long.ends_with('-'));
    }
}
