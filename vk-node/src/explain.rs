//! `spillway explain-pod`: whether a pod may burst to a provider, what it would cost per
//! hour, and the exact provider requests the node would send.

use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;
use serde_json::Value;
use spillway_common::config::{PricingConfig, Provider};
use spillway_common::cost;
use spillway_common::eligibility::{self, Ineligible};
use spillway_common::pod_resources;

use crate::aci::{self, translate::AciSettings};
use crate::env::Placeholders;
use crate::fargate::translate::{self, FargateSettings, TranslateError};

/// The answer, as printed with `-o json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// Whether the pod may run on the provider.
    pub eligible: bool,
    /// Why not (eligibility reasons of DESIGN §3), empty when eligible.
    pub reasons: Vec<String>,
    /// List price per hour of the chosen size; null when no size fits.
    pub hourly_cost_usd: Option<f64>,
    /// The size chosen: `{"cpu": "1024", "memory": "3072"}` for Fargate,
    /// `{"cpu": 1.5, "memoryInGB": 2.1}` for ACI.
    pub size: Option<Value>,
    /// Provider requests: for Fargate `registerTaskDefinition` and `runTask`; for ACI
    /// `containerGroupName` and `containerGroup` (the exact PUT body).
    pub request: Option<Value>,
    /// What could not be carried over to the provider.
    pub notes: Vec<String>,
    /// For each reason, the limit in words and where docs/limits.md explains it.
    pub limits: Vec<String>,
    /// What `kubectl exec`, `attach` and `port-forward` give on the provider.
    pub exec: String,
}

/// What `kubectl exec`, `attach` and `port-forward` give a burst pod on `provider`, with
/// the section of docs/limits.md that says more.
pub fn exec_support(provider: Provider) -> String {
    let what = match provider {
        Provider::Fargate => {
            "kubectl exec: with --enable-exec (ECS Exec), a command line split at spaces, with \
             stdin and a resizable terminal; attach: no"
        }
        Provider::Aci => {
            "kubectl exec: one program without arguments (e.g. -- /bin/sh), with stdin and a \
             terminal sized at the start, no exit code; attach: output only"
        }
    };
    format!("{what}; port-forward: no (docs/limits.md#exec-attach-port-forward)")
}

/// The limit behind an eligibility reason, in words, with its section of docs/limits.md.
pub fn limit(reason: Ineligible) -> String {
    let (what, section) = match reason {
        Ineligible::HostNetwork
        | Ineligible::HostPid
        | Ineligible::HostIpc
        | Ineligible::HostPath
        | Ineligible::Privileged
        | Ineligible::HostPort => ("a burst pod has no host to share", "host-access"),
        Ineligible::DaemonSet => (
            "a DaemonSet pod serves a host a virtual node does not have",
            "daemonsets",
        ),
        Ineligible::PersistentVolumeClaim => (
            "PersistentVolumeClaims are not carried to the provider",
            "volumes",
        ),
        Ineligible::UnsupportedVolume => {
            ("the provider cannot mount one of its volumes", "volumes")
        }
        Ineligible::Gpu => ("the providers' sizes offer no GPU", "gpus"),
        Ineligible::TooLarge => ("larger than the provider's largest size", "size"),
        Ineligible::ProviderLimits => (
            "more containers, volumes or ports than one provider object holds",
            "size",
        ),
    };
    format!("{}: {what} (docs/limits.md#{section})", reason.as_str())
}

/// Notes on the probes a burst pod would not have run on `provider`.
fn probe_notes(pod: &Pod, provider: Provider) -> Vec<String> {
    use crate::pods::probes::{ProbeAction, ProbeKind};
    crate::pods::probes::specs(pod)
        .into_iter()
        .filter_map(|spec| {
            let why = match spec.action {
                ProbeAction::Unsupported(why) => why,
                // Fargate runs them as ECS container health checks; ACI runs liveness
                // probes itself (restarting the container in place).
                ProbeAction::Exec(_) if provider == Provider::Aci => match spec.kind {
                    ProbeKind::Liveness => return None,
                    ProbeKind::Readiness => {
                        "ACI runs it but does not report readiness, so the container is \
                         ready when running"
                            .to_owned()
                    }
                    ProbeKind::Startup => "ACI has no startup probes".to_owned(),
                },
                _ => return None,
            };
            Some(format!(
                "container {}: its {} probe is not run on burst pods: {why} (docs/limits.md#probes)",
                spec.container,
                spec.kind.title().to_lowercase()
            ))
        })
        .collect()
}

/// Why a manifest could not be explained.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// Not YAML/JSON, or not a Pod.
    #[error("not a Pod manifest: {0}")]
    NotAPod(String),
}

/// Parses a Pod manifest (YAML or JSON).
pub fn parse_pod(text: &str) -> Result<Pod, ExplainError> {
    let value: Value =
        serde_yaml_ng::from_str(text).map_err(|e| ExplainError::NotAPod(e.to_string()))?;
    let value = match value.get("kind").and_then(Value::as_str) {
        Some("Pod") | None => value,
        Some("Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job") => {
            pod_of_template(&value, &value["spec"]["template"])?
        }
        Some("CronJob") => {
            pod_of_template(&value, &value["spec"]["jobTemplate"]["spec"]["template"])?
        }
        Some(other) => {
            return Err(ExplainError::NotAPod(format!(
                "kind is {other}, expected Pod or a workload with a pod template (Deployment, \
                 ReplicaSet, StatefulSet, DaemonSet, Job, CronJob)"
            )));
        }
    };
    if value
        .get("spec")
        .and_then(|s| s.get("containers"))
        .is_none()
    {
        return Err(ExplainError::NotAPod("spec.containers is missing".into()));
    }
    Pod::deserialize(&value).map_err(|e| ExplainError::NotAPod(e.to_string()))
}

use serde::Deserialize as _;

/// The pod a workload's template makes: the template's metadata and spec, named after the
/// workload, in its namespace.
fn pod_of_template(workload: &Value, template: &Value) -> Result<Value, ExplainError> {
    if template.is_null() {
        return Err(ExplainError::NotAPod(
            "the workload has no pod template (spec.template)".into(),
        ));
    }
    let mut metadata = template
        .get("metadata")
        .cloned()
        .unwrap_or_else(|| Value::Object(Default::default()));
    for key in ["name", "namespace"] {
        if let Some(value) = workload["metadata"].get(key) {
            metadata[key] = value.clone();
        }
    }
    Ok(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": template.get("spec").cloned().unwrap_or(Value::Null),
    }))
}

/// Explains `pod` for `provider` at `pricing`.
pub fn explain(
    pod: &Pod,
    provider: Provider,
    pricing: &PricingConfig,
) -> Result<Explanation, ExplainError> {
    let needs = pod
        .spec
        .as_ref()
        .map(pod_resources::effective)
        .unwrap_or_default();
    let reasons: Vec<Ineligible> = eligibility::check(pod, &needs, provider);
    let spot = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(spillway_common::keys::SPOT))
        .is_some_and(|v| v == "true");
    match provider {
        Provider::Fargate => {
            let settings = FargateSettings::offline(pricing.fargate.clone());
            let translated = translate::translate(pod, &settings, &Placeholders, None, spot);
            let mut explanation = Explanation {
                eligible: reasons.is_empty(),
                reasons: reasons.iter().map(|r| r.as_str().to_owned()).collect(),
                hourly_cost_usd: None,
                size: None,
                request: None,
                notes: Vec::new(),
                limits: reasons.iter().map(|r| limit(*r)).collect(),
                exec: exec_support(provider),
            };
            match translated {
                Ok(request) => {
                    explanation.hourly_cost_usd =
                        Some(cost::round_usd(request.size.hourly_cost(&settings.price)));
                    explanation.size = Some(serde_json::json!({
                        "cpu": request.size.cpu_units.to_string(),
                        "memory": request.size.memory_mib.to_string(),
                    }));
                    explanation.request = Some(serde_json::json!({
                        "registerTaskDefinition": request.register,
                        "runTask": request.run,
                    }));
                    explanation.notes = request.notes;
                    explanation.notes.extend(probe_notes(pod, provider));
                }
                Err(TranslateError::TooLarge { .. }) => {
                    if !explanation
                        .reasons
                        .iter()
                        .any(|r| r == Ineligible::TooLarge.as_str())
                    {
                        explanation
                            .reasons
                            .push(Ineligible::TooLarge.as_str().to_owned());
                        explanation.limits.push(limit(Ineligible::TooLarge));
                    }
                    explanation.eligible = false;
                }
                Err(other) => {
                    explanation.notes.push(other.to_string());
                    explanation.eligible = false;
                }
            }
            Ok(explanation)
        }
        Provider::Aci => {
            let settings = AciSettings::offline(pricing.aci.clone());
            let mut explanation = Explanation {
                eligible: reasons.is_empty(),
                reasons: reasons.iter().map(|r| r.as_str().to_owned()).collect(),
                hourly_cost_usd: None,
                size: None,
                request: None,
                notes: Vec::new(),
                limits: reasons.iter().map(|r| limit(*r)).collect(),
                exec: exec_support(provider),
            };
            match aci::translate::translate(pod, &settings, &Placeholders) {
                Ok(request) => {
                    let too_large = reasons.contains(&Ineligible::TooLarge);
                    explanation.hourly_cost_usd =
                        (!too_large).then(|| cost::round_usd(request.hourly_cost(&settings.price)));
                    explanation.size = Some(serde_json::json!({
                        "cpu": request.size.vcpu,
                        "memoryInGB": request.size.gb,
                    }));
                    explanation.request = Some(serde_json::json!({
                        "containerGroupName": request.name,
                        "containerGroup": request.group,
                    }));
                    explanation.notes = request.notes;
                    explanation.notes.extend(probe_notes(pod, provider));
                }
                Err(error) => {
                    explanation.notes.push(error.to_string());
                    explanation.eligible = false;
                }
            }
            Ok(explanation)
        }
    }
}

/// A few readable lines for people.
pub fn summary(explanation: &Explanation, provider: Provider) -> String {
    let mut out = String::new();
    if explanation.eligible {
        out.push_str(&format!("eligible for {provider}\n"));
    } else {
        out.push_str(&format!(
            "NOT eligible for {provider}: {}\n",
            explanation.reasons.join(", ")
        ));
        for limit in &explanation.limits {
            out.push_str(&format!("  kept local: {limit}\n"));
        }
    }
    if let (Some(size), Some(cost)) = (&explanation.size, explanation.hourly_cost_usd) {
        let number = |key: &str| {
            size[key]
                .as_f64()
                .or_else(|| size[key].as_str().and_then(|v| v.parse().ok()))
                .unwrap_or(0.0)
        };
        let line = match provider {
            Provider::Fargate => format!(
                "size: {} vCPU, {} GiB ({} CPU units, {} MiB)",
                number("cpu") / 1024.0,
                number("memory") / 1024.0,
                number("cpu"),
                number("memory")
            ),
            Provider::Aci => format!("size: {} vCPU, {} GB", number("cpu"), number("memoryInGB")),
        };
        out.push_str(&format!(
            "{line}\ncost: {cost:.6} USD per hour, about {:.2} USD per 30-day month\n",
            cost * 24.0 * 30.0
        ));
    }
    if let Some(request) = &explanation.request {
        match provider {
            Provider::Fargate => out.push_str(&format!(
                "task definition family: {}\n",
                request["registerTaskDefinition"]["family"]
                    .as_str()
                    .unwrap_or("")
            )),
            Provider::Aci => out.push_str(&format!(
                "container group: {}\n",
                request["containerGroupName"].as_str().unwrap_or("")
            )),
        }
    }
    for note in &explanation.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out.push_str(&format!("exec: {}\n", explanation.exec));
    out.push_str("(use -o json for the exact provider requests)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
            "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn a_pod_kept_local_names_the_limit_and_where_it_is_explained() {
        let pod = pod(serde_json::json!({
            "containers": [{"name": "app", "image": "nginx"}],
            "volumes": [{"name": "logs", "hostPath": {"path": "/var/log"}}]
        }));
        let explanation = explain(&pod, Provider::Fargate, &PricingConfig::default()).unwrap();
        assert!(!explanation.eligible);
        assert_eq!(
            explanation.limits,
            ["host-path: a burst pod has no host to share (docs/limits.md#host-access)"]
        );
        let text = summary(&explanation, Provider::Fargate);
        assert!(text.contains("kept local: host-path"), "{text}");
    }

    #[test]
    fn probes_a_burst_pod_would_not_have_run_are_noted() {
        let pod = pod(serde_json::json!({
            "containers": [{"name": "app", "image": "nginx",
                "readinessProbe": {"exec": {"command": ["ready"]}},
                "livenessProbe": {"exec": {"command": ["true"]}}}]
        }));
        // (provider, probe notes expected): Fargate runs the exec probe as an ECS
        // health check.
        for (provider, expected) in [(Provider::Fargate, 0), (Provider::Aci, 1)] {
            let explanation = explain(&pod, provider, &PricingConfig::default()).unwrap();
            assert!(explanation.eligible);
            let probes: Vec<&String> = explanation
                .notes
                .iter()
                .filter(|n| n.contains("probe"))
                .collect();
            assert_eq!(probes.len(), expected, "{provider}: {probes:?}");
            if let Some(note) = probes.first() {
                assert!(
                    note.starts_with("container app: its readiness probe is not run"),
                    "{note}"
                );
            }
        }
        let fargate = explain(&pod, Provider::Fargate, &PricingConfig::default()).unwrap();
        let check = &fargate.request.unwrap()["registerTaskDefinition"]["containerDefinitions"][0]
            ["healthCheck"];
        // One health check per container: the liveness probe's.
        assert_eq!(check["command"], serde_json::json!(["CMD", "true"]));
        assert_eq!(check["retries"], 3);
    }

    #[test]
    fn what_exec_gives_is_said_per_provider() {
        let plain = pod(serde_json::json!({"containers": [{"name": "app", "image": "web"}]}));
        let fargate = explain(&plain, Provider::Fargate, &PricingConfig::default()).unwrap();
        assert!(
            fargate.exec.contains("with --enable-exec"),
            "{}",
            fargate.exec
        );
        let aci = explain(&plain, Provider::Aci, &PricingConfig::default()).unwrap();
        assert!(
            aci.exec.contains("one program without arguments"),
            "{}",
            aci.exec
        );
        let text = summary(&aci, Provider::Aci);
        assert!(text.contains("exec: kubectl exec: one program"), "{text}");
        assert!(aci.exec.contains("docs/limits.md#exec-attach-port-forward"));
    }

    #[test]
    fn every_limit_points_at_a_section_of_the_limits_page() {
        let page = include_str!("../../docs/limits.md");
        let sections: Vec<String> = page
            .lines()
            .filter_map(|l| l.strip_prefix("## "))
            .map(|title| {
                title
                    .to_lowercase()
                    .chars()
                    .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
                    .collect::<String>()
                    .replace(' ', "-")
            })
            .collect();
        let reasons = [
            Ineligible::HostNetwork,
            Ineligible::HostPid,
            Ineligible::HostIpc,
            Ineligible::HostPath,
            Ineligible::Privileged,
            Ineligible::HostPort,
            Ineligible::DaemonSet,
            Ineligible::PersistentVolumeClaim,
            Ineligible::Gpu,
            Ineligible::TooLarge,
            Ineligible::UnsupportedVolume,
            Ineligible::ProviderLimits,
        ];
        for reason in reasons {
            let text = limit(reason);
            let anchor = text
                .rsplit("docs/limits.md#")
                .next()
                .unwrap_or_default()
                .trim_end_matches(')');
            assert!(
                sections.iter().any(|s| s == anchor),
                "{text}: no section {anchor} in {sections:?}"
            );
        }
        assert!(sections.iter().any(|s| s == "probes"));
    }
}
