//! The ConfigMaps and Secrets a pod needs before it can start (env, envFrom, volumes and
//! projected volumes), and which of them are missing. A missing *required* one holds the
//! pod back (Event `MandatoryConfigMapNotFound` / `MandatorySecretNotFound`, or the
//! `…KeyNotFound` forms for a key; retried until it appears); a missing *optional* one is
//! reported (`Optional…NotFound`) and the pod starts. virtual-kubelet's reason names, so
//! existing dashboards and runbooks match.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;

/// ConfigMap or Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefKind {
    /// A ConfigMap.
    ConfigMap,
    /// A Secret.
    Secret,
}

impl RefKind {
    fn word(self) -> &'static str {
        match self {
            RefKind::ConfigMap => "ConfigMap",
            RefKind::Secret => "Secret",
        }
    }
}

/// One thing a pod refers to: an object, or one key of it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// ConfigMap or Secret.
    pub kind: RefKind,
    /// Its name.
    pub name: String,
    /// The key, for `configMapKeyRef` / `secretKeyRef`.
    pub key: Option<String>,
    /// Whether the pod may start without it.
    pub optional: bool,
}

impl ObjectRef {
    /// virtual-kubelet's Event reason for this reference being missing.
    pub fn reason(&self) -> &'static str {
        match (self.optional, self.kind, self.key.is_some()) {
            (false, RefKind::ConfigMap, false) => "MandatoryConfigMapNotFound",
            (false, RefKind::ConfigMap, true) => "MandatoryConfigMapKeyNotFound",
            (false, RefKind::Secret, false) => "MandatorySecretNotFound",
            (false, RefKind::Secret, true) => "MandatorySecretKeyNotFound",
            (true, RefKind::ConfigMap, false) => "OptionalConfigMapNotFound",
            (true, RefKind::ConfigMap, true) => "OptionalConfigMapKeyNotFound",
            (true, RefKind::Secret, false) => "OptionalSecretNotFound",
            (true, RefKind::Secret, true) => "OptionalSecretKeyNotFound",
        }
    }

    /// What an Event about it says.
    pub fn message(&self, namespace: &str) -> String {
        let what = match &self.key {
            Some(key) => format!(
                "key {key:?} of {} {namespace}/{}",
                self.kind.word(),
                self.name
            ),
            None => format!("{} {namespace}/{}", self.kind.word(), self.name),
        };
        if self.optional {
            format!("optional {what} not found; starting the pod without it")
        } else {
            format!("{what} not found; the pod will start once it exists")
        }
    }
}

/// Everything `pod` refers to, each reference once (an object named both optionally and
/// as required counts as required).
pub fn references(pod: &Pod) -> Vec<ObjectRef> {
    let mut refs = BTreeSet::new();
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let mut add = |kind, name: &str, key: Option<&str>, optional: Option<bool>| {
        refs.insert(ObjectRef {
            kind,
            name: name.to_owned(),
            key: key.map(str::to_owned),
            optional: optional == Some(true),
        });
    };
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    for container in containers {
        for var in container.env.iter().flatten() {
            let Some(source) = &var.value_from else {
                continue;
            };
            if let Some(r) = &source.config_map_key_ref {
                add(RefKind::ConfigMap, &r.name, Some(&r.key), r.optional);
            }
            if let Some(r) = &source.secret_key_ref {
                add(RefKind::Secret, &r.name, Some(&r.key), r.optional);
            }
        }
        for from in container.env_from.iter().flatten() {
            if let Some(r) = &from.config_map_ref {
                add(RefKind::ConfigMap, &r.name, None, r.optional);
            }
            if let Some(r) = &from.secret_ref {
                add(RefKind::Secret, &r.name, None, r.optional);
            }
        }
    }
    for volume in spec.volumes.iter().flatten() {
        if let Some(cm) = &volume.config_map {
            add(RefKind::ConfigMap, &cm.name, None, cm.optional);
        }
        if let Some(secret) = &volume.secret
            && let Some(name) = &secret.secret_name
        {
            add(RefKind::Secret, name, None, secret.optional);
        }
        for source in volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
        {
            if let Some(cm) = &source.config_map {
                add(RefKind::ConfigMap, &cm.name, None, cm.optional);
            }
            if let Some(secret) = &source.secret {
                add(RefKind::Secret, &secret.name, None, secret.optional);
            }
        }
    }
    // A required reference wins over an optional one to the same thing.
    let required: BTreeSet<(RefKind, String, Option<String>)> = refs
        .iter()
        .filter(|r| !r.optional)
        .map(|r| (r.kind, r.name.clone(), r.key.clone()))
        .collect();
    refs.into_iter()
        .filter(|r| !r.optional || !required.contains(&(r.kind, r.name.clone(), r.key.clone())))
        .collect()
}

/// The keys each object has (`None`: the object does not exist).
pub type Found = BTreeMap<(RefKind, String), Option<BTreeSet<String>>>;

/// The references of `refs` that `found` does not satisfy: a missing object once (without
/// a key, however many of its keys are named), else each missing key.
pub fn missing(refs: &[ObjectRef], found: &Found) -> Vec<ObjectRef> {
    let mut missing = BTreeSet::new();
    for r in refs {
        match found.get(&(r.kind, r.name.clone())) {
            Some(Some(keys)) => {
                if r.key.as_ref().is_some_and(|k| !keys.contains(k)) {
                    missing.insert(r.clone());
                }
            }
            _ => {
                missing.insert(ObjectRef {
                    key: None,
                    ..r.clone()
                });
            }
        }
    }
    // The object is required if any reference to it is.
    let required: BTreeSet<(RefKind, String, Option<String>)> = missing
        .iter()
        .filter(|r| !r.optional)
        .map(|r| (r.kind, r.name.clone(), r.key.clone()))
        .collect();
    missing
        .into_iter()
        .filter(|r| !r.optional || !required.contains(&(r.kind, r.name.clone(), r.key.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn references_come_from_env_env_from_volumes_and_projections() {
        let pod = pod(serde_json::json!({
            "containers": [{"name": "app", "env": [
                {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "a"}}},
                {"name": "B", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "b", "optional": true}}},
            ], "envFrom": [{"secretRef": {"name": "bulk"}}]}],
            "volumes": [
                {"name": "v1", "configMap": {"name": "files", "optional": true}},
                {"name": "v2", "secret": {"secretName": "certs"}},
                {"name": "v3", "projected": {"sources": [{"configMap": {"name": "proj"}}]}},
            ],
        }));
        let reasons: Vec<(&str, String)> = references(&pod)
            .iter()
            .map(|r| (r.reason(), r.name.clone()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("OptionalConfigMapNotFound", "files".into()),
                ("MandatoryConfigMapNotFound", "proj".into()),
                ("MandatoryConfigMapKeyNotFound", "settings".into()),
                ("MandatorySecretNotFound", "bulk".into()),
                ("MandatorySecretNotFound", "certs".into()),
                ("OptionalSecretKeyNotFound", "creds".into()),
            ]
        );
    }

    #[test]
    fn a_required_reference_wins_over_an_optional_one_to_the_same_object() {
        let pod = pod(serde_json::json!({
            "containers": [{"name": "app", "envFrom": [
                {"configMapRef": {"name": "settings", "optional": true}},
                {"configMapRef": {"name": "settings"}},
            ]}],
        }));
        let refs = references(&pod);
        assert_eq!(refs.len(), 1);
        assert!(!refs[0].optional);
    }

    #[test]
    fn missing_objects_and_keys_are_found() {
        let refs = vec![
            ObjectRef {
                kind: RefKind::ConfigMap,
                name: "settings".into(),
                key: Some("a".into()),
                optional: false,
            },
            ObjectRef {
                kind: RefKind::ConfigMap,
                name: "settings".into(),
                key: Some("b".into()),
                optional: false,
            },
            ObjectRef {
                kind: RefKind::Secret,
                name: "creds".into(),
                key: None,
                optional: true,
            },
        ];
        let mut found = Found::new();
        found.insert(
            (RefKind::ConfigMap, "settings".into()),
            Some(BTreeSet::from(["a".to_owned()])),
        );
        found.insert((RefKind::Secret, "creds".into()), None);
        let missing = missing(&refs, &found);
        assert_eq!(missing, vec![refs[1].clone(), refs[2].clone()]);
        assert_eq!(
            missing[0].message("shop"),
            "key \"b\" of ConfigMap shop/settings not found; the pod will start once it exists"
        );
        assert_eq!(missing[0].reason(), "MandatoryConfigMapKeyNotFound");
        // An object that does not exist is reported once, as the object.
        found.insert((RefKind::ConfigMap, "settings".into()), None);
        let gone = super::missing(&refs, &found);
        assert_eq!(gone.len(), 2);
        assert_eq!(gone[0].reason(), "MandatoryConfigMapNotFound");
        assert_eq!(gone[1].reason(), "OptionalSecretNotFound");
    }
}
