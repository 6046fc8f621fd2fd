//! The ConfigMaps and Secrets one pod names (env, envFrom, volumes, imagePullSecrets),
//! fetched from the apiserver with GETs before its container group is built, and served
//! to the translation as an [`AciLookup`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use base64::Engine as _;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;

use super::arm_types::ImageRegistryCredential;
use super::translate::{AciLookup, VolumeFiles, VolumeKind};
use crate::env::EnvLookup;
use crate::env_refs::{self, RefKind};
use crate::provider::ProviderError;

/// What was fetched: each object's keys and contents (`None`: it does not exist).
#[derive(Debug, Default)]
pub struct ClusterObjects {
    config_maps: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    secrets: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
}

impl ClusterObjects {
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

    /// Fetches everything `pod` names.
    pub async fn fetch(client: &kube::Client, pod: &Pod) -> Result<Self, ProviderError> {
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
        let transient = |e: kube::Error| ProviderError::Transient(e.to_string());
        let mut objects = Self::default();
        let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        for name in config_maps {
            let found = cm_api.get_opt(&name).await.map_err(transient)?.map(|cm| {
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
            let found = secret_api
                .get_opt(&name)
                .await
                .map_err(transient)?
                .map(|s| {
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

    fn text(files: &BTreeMap<String, Vec<u8>>, key: &str) -> Option<String> {
        files
            .get(key)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

impl EnvLookup for ClusterObjects {
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

/// `.dockerconfigjson`: `{"auths": {"<server>": {"username", "password"} | {"auth"}}}`.
fn docker_config_credentials(json: &[u8]) -> Option<Vec<ImageRegistryCredential>> {
    let config: serde_json::Value = serde_json::from_slice(json).ok()?;
    let auths = config.get("auths")?.as_object()?;
    let engine = base64::engine::general_purpose::STANDARD;
    let credentials = auths
        .iter()
        .filter_map(|(server, entry)| {
            let field = |name: &str| entry.get(name).and_then(|v| v.as_str()).map(str::to_owned);
            let (username, password) = match (field("username"), field("password")) {
                (Some(u), Some(p)) => (u, p),
                _ => {
                    let decoded = engine.decode(field("auth")?).ok()?;
                    let text = String::from_utf8(decoded).ok()?;
                    let (u, p) = text.split_once(':')?;
                    (u.to_owned(), p.to_owned())
                }
            };
            Some(ImageRegistryCredential {
                server: server
                    .trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_owned(),
                username: Some(username),
                password: Some(password),
                ..ImageRegistryCredential::default()
            })
        })
        .collect();
    Some(credentials)
}

impl AciLookup for ClusterObjects {
    fn secret_value(&self, name: &str, key: &str) -> Option<String> {
        Self::text(self.secrets.get(name)?.as_ref()?, key)
    }
    fn volume_files(&self, kind: VolumeKind, name: &str) -> VolumeFiles {
        let source = match kind {
            VolumeKind::ConfigMap => &self.config_maps,
            VolumeKind::Secret => &self.secrets,
        };
        match source.get(name) {
            Some(Some(files)) => VolumeFiles::Found(files.clone()),
            _ => VolumeFiles::Missing,
        }
    }
    fn registry_credentials(&self, secret: &str) -> Option<Vec<ImageRegistryCredential>> {
        let files = self.secrets.get(secret)?.as_ref()?;
        docker_config_credentials(files.get(".dockerconfigjson")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_credentials_come_from_either_form_of_a_docker_config() {
        let json = br#"{"auths": {
            "https://registry.example/": {"username": "robot", "password": "s3cret"},
            "other.example": {"auth": "dXNlcjpwYTpzcw=="}
        }}"#;
        let mut creds = docker_config_credentials(json).unwrap();
        creds.sort_by(|a, b| a.server.cmp(&b.server));
        assert_eq!(creds[0].server, "other.example");
        assert_eq!(creds[0].username.as_deref(), Some("user"));
        assert_eq!(creds[0].password.as_deref(), Some("pa:ss"));
        assert_eq!(creds[1].server, "registry.example");
        assert_eq!(creds[1].password.as_deref(), Some("s3cret"));
        assert!(docker_config_credentials(b"not json").is_none());
    }

    #[test]
    fn missing_objects_are_missing_and_present_ones_serve_values() {
        let objects = ClusterObjects::with(
            [(
                "settings".to_owned(),
                BTreeMap::from([("mode".to_owned(), b"fast".to_vec())]),
            )],
            [(
                "db".to_owned(),
                BTreeMap::from([("password".to_owned(), b"pw".to_vec())]),
            )],
        );
        assert_eq!(
            objects.config_map_value("settings", "mode").as_deref(),
            Some("fast")
        );
        assert_eq!(
            objects.secret_value("db", "password").as_deref(),
            Some("pw")
        );
        assert_eq!(objects.secret_value("db", "user"), None);
        assert_eq!(
            objects.volume_files(VolumeKind::Secret, "absent"),
            VolumeFiles::Missing
        );
        assert_eq!(objects.secret_keys("db"), Some(vec!["password".to_owned()]));
    }
}
