//! The MutatingWebhookConfiguration `spillway run` registers, and what it may touch: only
//! a configuration it made (labelled `app.kubernetes.io/managed-by: spillway-run`), never
//! the chart's or anyone else's; one a crashed run left on this machine (its owner
//! annotation names this host and a process that is gone) is removed by the next run, so
//! a dead URL does not slow every pod create by the webhook's timeout.

use anyhow::{Context, bail};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

/// The label every configuration `spillway run` makes carries.
pub const MANAGED_BY_KEY: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "spillway-run";
/// `<host>/<pid>` of the run that registered it.
pub const OWNER_ANNOTATION: &str = "spillway.io/run-owner";

/// This process as an owner: `<host>/<pid>`.
pub fn this_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}/{}", host.trim(), std::process::id())
}

/// Whether `spillway run` made this configuration.
pub fn made_by_run(config: &MutatingWebhookConfiguration) -> bool {
    config
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_KEY))
        .is_some_and(|v| v == MANAGED_BY)
}

/// Refuses to overwrite a configuration named `name` that `spillway run` did not make.
pub fn may_overwrite(
    name: &str,
    existing: Option<&MutatingWebhookConfiguration>,
) -> anyhow::Result<()> {
    match existing {
        Some(config) if !made_by_run(config) => bail!(
            "MutatingWebhookConfiguration {name} exists and was not made by spillway run (no \
             label {MANAGED_BY_KEY}={MANAGED_BY}: the Helm chart's, or someone else's); \
             spillway run leaves it alone: give another --webhook-name"
        ),
        _ => Ok(()),
    }
}

/// Whether a configuration was left by a run on `host` whose process is gone.
pub fn left_by_a_crash(
    config: &MutatingWebhookConfiguration,
    host: &str,
    alive: impl Fn(u32) -> bool,
) -> bool {
    if !made_by_run(config) {
        return false;
    }
    let Some((owner_host, pid)) = config
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(OWNER_ANNOTATION))
        .and_then(|owner| owner.rsplit_once('/'))
    else {
        return false;
    };
    owner_host == host && pid.parse::<u32>().is_ok_and(|pid| !alive(pid))
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the configurations crashed runs on this host left (all but `keep`).
pub async fn remove_leftovers(api: &Api<MutatingWebhookConfiguration>, keep: &str) {
    let selector = format!("{MANAGED_BY_KEY}={MANAGED_BY}");
    let listed = match api.list(&ListParams::default().labels(&selector)).await {
        Ok(listed) => listed,
        Err(error) => {
            tracing::warn!(%error, "cannot list earlier spillway run registrations");
            return;
        }
    };
    let this = this_owner();
    let host = this.rsplit_once('/').map_or("", |(host, _)| host);
    for config in listed.items {
        let Some(name) = config.metadata.name.clone() else {
            continue;
        };
        if name == keep || !left_by_a_crash(&config, host, process_alive) {
            continue;
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => tracing::warn!(
                name,
                "removed the webhook registration a crashed spillway run left on this host"
            ),
            Err(error) => tracing::warn!(%error, name, "cannot remove a leftover registration"),
        }
    }
}

/// Registers `configuration` as `name` (create or update), unless a configuration of that
/// name was not made by `spillway run`.
pub async fn register(
    api: &Api<MutatingWebhookConfiguration>,
    name: &str,
    configuration: &serde_json::Value,
) -> anyhow::Result<()> {
    let existing = api
        .get_opt(name)
        .await
        .with_context(|| format!("reading MutatingWebhookConfiguration {name}"))?;
    may_overwrite(name, existing.as_ref())?;
    api.patch(
        name,
        &PatchParams::apply("spillway-run").force(),
        &Patch::Apply(configuration),
    )
    .await
    .with_context(|| format!("registering MutatingWebhookConfiguration {name}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(
        labels: serde_json::Value,
        annotations: serde_json::Value,
    ) -> MutatingWebhookConfiguration {
        serde_json::from_value(
            json!({"metadata": {"name": "spillway", "labels": labels, "annotations": annotations}}),
        )
        .unwrap()
    }

    #[test]
    fn only_its_own_registration_is_overwritten() {
        let ours = config(json!({MANAGED_BY_KEY: MANAGED_BY}), json!({}));
        let charts = config(json!({MANAGED_BY_KEY: "Helm"}), json!({}));
        assert!(may_overwrite("spillway", None).is_ok());
        assert!(may_overwrite("spillway", Some(&ours)).is_ok());
        let refused = may_overwrite("spillway", Some(&charts))
            .unwrap_err()
            .to_string();
        assert!(refused.contains("--webhook-name"), "{refused}");
    }

    #[test]
    fn leftovers_are_its_own_from_this_host_of_a_dead_process() {
        let left = |owner: &str| {
            config(
                json!({MANAGED_BY_KEY: MANAGED_BY}),
                json!({OWNER_ANNOTATION: owner}),
            )
        };
        let dead = |_: u32| false;
        let alive = |_: u32| true;
        assert!(left_by_a_crash(&left("laptop/4242"), "laptop", dead));
        assert!(!left_by_a_crash(&left("laptop/4242"), "laptop", alive));
        assert!(!left_by_a_crash(&left("other/4242"), "laptop", dead));
        assert!(!left_by_a_crash(&left("laptop/x"), "laptop", dead));
        let foreign = config(json!({}), json!({OWNER_ANNOTATION: "laptop/4242"}));
        assert!(!left_by_a_crash(&foreign, "laptop", dead));
    }
}
