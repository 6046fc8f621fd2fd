//! This Kubernetes cluster's id at the providers: in every ECS task's `startedBy` and tags,
//! in secret names and in ACI container groups' tags. Two clusters with the same id adopt,
//! sweep and stop each other's tasks, groups and secrets, so the id is never a shared
//! default: unless `--cluster-id` names one, it derives from the `kube-system` namespace's
//! UID, which no other cluster has. The literal `default` (what older installs and charts
//! used) is refused unless `--allow-default-cluster-id` says it is meant.

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;

/// The namespace whose UID names the cluster.
pub const ANCHOR_NAMESPACE: &str = "kube-system";

/// The id that every install once shared.
pub const SHARED_DEFAULT: &str = "default";

/// The id derived from the anchor namespace's UID: `k8s-` and its first 12 hex digits.
pub fn derived(namespace_uid: &str) -> String {
    let hex: String = namespace_uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect::<String>()
        .to_ascii_lowercase();
    format!("k8s-{hex}")
}

/// Refuses the shared default unless it was allowed.
pub fn check_given(given: &str, allow_default: bool) -> Result<(), String> {
    if given == SHARED_DEFAULT && !allow_default {
        return Err(format!(
            "--cluster-id {SHARED_DEFAULT}: every install that names no id used to share it, and \
             a second cluster with it adopts and stops this one's tasks, container groups and \
             secrets; leave --cluster-id unset (it then derives from the {ANCHOR_NAMESPACE} \
             namespace's UID), name this cluster, or pass --allow-default-cluster-id if the \
             tasks already running under '{SHARED_DEFAULT}' are this cluster's"
        ));
    }
    Ok(())
}

/// The id to use: `given` (checked), else derived from the anchor namespace.
pub async fn resolve(
    given: Option<&str>,
    allow_default: bool,
    client: &kube::Client,
) -> Result<String, String> {
    if let Some(given) = given {
        check_given(given, allow_default)?;
        return Ok(given.to_owned());
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let anchor = namespaces.get(ANCHOR_NAMESPACE).await.map_err(|e| {
        format!(
            "--cluster-id is unset and the {ANCHOR_NAMESPACE} namespace, whose UID names the \
             cluster, could not be read ({e}); grant get on it or set --cluster-id"
        )
    })?;
    let uid = anchor.metadata.uid.unwrap_or_default();
    if uid.is_empty() {
        return Err(format!(
            "--cluster-id is unset and the {ANCHOR_NAMESPACE} namespace has no UID; set --cluster-id"
        ));
    }
    Ok(derived(&uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derived_id_is_short_and_fits_every_provider_name() {
        let id = derived("5F0c3a9e-1b2d-4e6f-8a7b-9c0d1e2f3a4b");
        assert_eq!(id, "k8s-5f0c3a9e1b2d");
        assert!(id.len() <= 40);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(
            derived("11111111-0000-0000-0000-000000000000"),
            derived("22222222-0000-0000-0000-000000000000")
        );
    }

    #[test]
    fn the_shared_default_is_refused_unless_allowed() {
        let refused = check_given("default", false).unwrap_err();
        assert!(refused.contains("--allow-default-cluster-id"), "{refused}");
        assert!(check_given("default", true).is_ok());
        assert!(check_given("prod-eu-1", false).is_ok());
    }
}
