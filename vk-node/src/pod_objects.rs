//! The ConfigMaps and Secrets one pod names (env, envFrom, volumes, imagePullSecrets),
//! fetched once per create by the node with one GET each and handed to the provider,
//! which holds no Kubernetes client of its own. The same fetch says what is missing, so
//! a create is held back until required objects exist.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;

use crate::env::EnvLookup;
use crate::env_refs::{self, ObjectRef, RefKind};

/// What was fetched: each object's keys and contents (`None`: it does not exist).
#[derive(Debug, Default)]
pub struct PodObjects {
    config_maps: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    secrets: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
}

impl PodObjects {
    /// Objects known up front (tests).
    pub fn with(
        config_maps: impl IntoIterator<Item = (String, BTreeMap<String, Vec<u8>>)>,
        secrets: impl IntoIterator<Item = (String, BTreeMap<String, Vec<u8>>)>,
    ) -> Self {
        Self {
            config_maps: config_maps.into_iter().map(|(k, v)| (k, Some(v))).collect(),
            secrets: secrets.into_iter().map(|(k, v)| (k, Some(v))).collect(),
        }
    }

    /// Fetches everything `pod` names, one GET per object.
    pub async fn fetch(client: &kube::Client, pod: &Pod) -> Result<Self, kube::Error> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut config_maps = BTreeSet::new();
        let mut secrets = BTreeSet::new();
        for r in env_refs::references(pod) {
            match r.kind {
                RefKind::ConfigMap => config_maps.insert(r.name),
                RefKind::Secret => secrets.insert(r.name),
            };
        }
        for pull in pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
        {
            secrets.insert(pull.name.clone());
        }
        let mut objects = Self::default();
        let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        for name in config_maps {
            let found = cm_api.get_opt(&name).await?.map(|cm| {
                let mut files: BTreeMap<String, Vec<u8>> = cm
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                files.extend(
                    cm.binary_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0)),
                );
                files
            });
            objects.config_maps.insert(name, found);
        }
        let secret_api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        for name in secrets {
            let found = secret_api.get_opt(&name).await?.map(|s| {
                let mut files: BTreeMap<String, Vec<u8>> = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                files.extend(
                    s.string_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes())),
                );
                files
            });
            objects.secrets.insert(name, found);
        }
        Ok(objects)
    }

    /// A ConfigMap's files (`None`: not fetched, or it does not exist).
    pub fn config_map(&self, name: &str) -> Option<&BTreeMap<String, Vec<u8>>> {
        self.config_maps.get(name)?.as_ref()
    }

    /// A Secret's files (`None`: not fetched, or it does not exist).
    pub fn secret(&self, name: &str) -> Option<&BTreeMap<String, Vec<u8>>> {
        self.secrets.get(name)?.as_ref()
    }

    /// A Secret's value as text.
    pub fn secret_text(&self, name: &str, key: &str) -> Option<String> {
        Self::text(self.secret(name)?, key)
    }

    /// The references of `pod` these objects do not satisfy (missing objects and keys).
    pub fn missing(&self, pod: &Pod) -> Vec<ObjectRef> {
        let refs = env_refs::references(pod);
        let mut found = env_refs::Found::new();
        for r in &refs {
            let source = match r.kind {
                RefKind::ConfigMap => &self.config_maps,
                RefKind::Secret => &self.secrets,
            };
            let keys = source
                .get(&r.name)
                .and_then(|files| files.as_ref())
                .map(|files| files.keys().cloned().collect());
            found.insert((r.kind, r.name.clone()), keys);
        }
        env_refs::missing(&refs, &found)
    }

    fn text(files: &BTreeMap<String, Vec<u8>>, key: &str) -> Option<String> {
        files
            .get(key)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

impl EnvLookup for PodObjects {
    fn config_map_value(&self, name: &str, key: &str) -> Option<String> {
        Self::text(self.config_maps.get(name)?.as_ref()?, key)
    }
    fn config_map_entries(&self, name: &str) -> Option<Vec<(String, String)>> {
        let files = self.config_maps.get(name)?.as_ref()?;
        Some(
            files
                .keys()
                .filter_map(|k| Some((k.clone(), Self::text(files, k)?)))
                .collect(),
        )
    }
    fn secret_keys(&self, name: &str) -> Option<Vec<String>> {
        Some(self.secrets.get(name)?.as_ref()?.keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects() -> PodObjects {
        PodObjects::with(
            [(
                "settings".to_owned(),
                BTreeMap::from([("mode".to_owned(), b"fast".to_vec())]),
            )],
            [(
                "db".to_owned(),
                BTreeMap::from([("password".to_owned(), b"pw".to_vec())]),
            )],
        )
    }

    #[test]
    fn present_objects_serve_values_and_absent_ones_nothing() {
        let objects = objects();
        assert_eq!(
            objects.config_map_value("settings", "mode").as_deref(),
            Some("fast")
        );
        assert_eq!(objects.secret_text("db", "password").as_deref(), Some("pw"));
        assert_eq!(objects.secret_text("db", "user"), None);
        assert_eq!(objects.secret_keys("db"), Some(vec!["password".to_owned()]));
        assert!(objects.secret("absent").is_none());
    }

    #[test]
    fn what_is_missing_is_said_per_object_and_per_key() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"containers": [{"name": "app", "env": [
                {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
                {"name": "B", "valueFrom": {"secretKeyRef": {"name": "db", "key": "user"}}},
                {"name": "C", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "x", "optional": true}}}
            ]}]}
        }))
        .unwrap();
        let reasons: Vec<(&str, String)> = objects()
            .missing(&pod)
            .iter()
            .map(|r| (r.reason(), r.name.clone()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("MandatorySecretKeyNotFound", "db".to_owned()),
                ("OptionalSecretNotFound", "gone".to_owned()),
            ]
        );
    }
}
