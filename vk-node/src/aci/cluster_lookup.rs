//! What the translation to a container group reads of the ConfigMaps and Secrets the
//! node fetched for a pod ([`PodObjects`]): Secret values, volume files and registry
//! credentials.

use base64::Engine as _;

use super::arm_types::ImageRegistryCredential;
use super::translate::{AciLookup, VolumeFiles, VolumeKind};
use crate::pod_objects::PodObjects;

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

impl AciLookup for PodObjects {
    fn secret_value(&self, name: &str, key: &str) -> Option<String> {
        self.secret_text(name, key)
    }
    fn volume_files(&self, kind: VolumeKind, name: &str) -> VolumeFiles {
        let files = match kind {
            VolumeKind::ConfigMap => self.config_map(name),
            VolumeKind::Secret => self.secret(name),
        };
        match files {
            Some(files) => VolumeFiles::Found(files.clone()),
            None => VolumeFiles::Missing,
        }
    }
    fn registry_credentials(&self, secret: &str) -> Option<Vec<ImageRegistryCredential>> {
        docker_config_credentials(self.secret(secret)?.get(".dockerconfigjson")?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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
    fn volumes_and_secret_values_come_from_the_fetched_objects() {
        let objects = PodObjects::with(
            [],
            [(
                "db".to_owned(),
                BTreeMap::from([("password".to_owned(), b"pw".to_vec())]),
            )],
        );
        assert_eq!(
            objects.secret_value("db", "password").as_deref(),
            Some("pw")
        );
        assert_eq!(
            objects.volume_files(VolumeKind::Secret, "absent"),
            VolumeFiles::Missing
        );
        assert!(matches!(
            objects.volume_files(VolumeKind::Secret, "db"),
            VolumeFiles::Found(_)
        ));
    }
}
