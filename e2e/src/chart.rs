//! The Helm chart as the tests see it: `helm` runs on `charts/spillway`, the rendered
//! manifests as YAML documents, and the metric names the chart's alerts and dashboard
//! query.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{repo_root, run_dir};

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/spillway")
}

/// Runs the test bed's helm (fetched by `e2e/testbed up`) against the test bed, and
/// returns its stdout; a failure carries helm's stderr.
pub fn helm(args: &[&str]) -> anyhow::Result<String> {
    let output = helm_output(args)?;
    if !output.status.success() {
        bail!("helm {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// Runs helm and returns its whole output, whatever its exit status.
pub fn helm_output(args: &[&str]) -> anyhow::Result<std::process::Output> {
    let binary = repo_root().join("e2e/.build/bin/helm");
    anyhow::ensure!(
        binary.exists(),
        "{} is missing: `e2e/testbed up` fetches it",
        binary.display()
    );
    Command::new(&binary)
        .arg("--kubeconfig")
        .arg(run_dir().join("kubeconfig"))
        .args(args)
        .output()
        .with_context(|| format!("running {}", binary.display()))
}

/// `helm template` of the chart with `values_files`, as one JSON value per document.
pub fn render(
    release: &str,
    namespace: &str,
    values_files: &[&Path],
) -> anyhow::Result<Vec<Value>> {
    let chart = chart_dir();
    let mut args = vec![
        "template".to_owned(),
        release.to_owned(),
        chart.display().to_string(),
        "--namespace".to_owned(),
        namespace.to_owned(),
    ];
    for file in values_files {
        args.push("--values".to_owned());
        args.push(file.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    documents(&helm(&args)?)
}

/// Splits multi-document YAML into JSON values, skipping empty documents.
pub fn documents(yaml: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value: Value = serde::Deserialize::deserialize(document)?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// The one rendered object of `kind` named `name`.
pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name} in the rendered chart"))
}

/// The metric names a PromQL expression reads: identifiers left once strings, label
/// matchers, ranges, groupings, function calls, keywords and numbers are taken out.
pub fn promql_metric_names(expr: &str) -> Vec<String> {
    let mut text = expr.to_owned();
    // String literals, then (innermost first) braces: label matchers and Helm's {{ }}.
    text = strip_delimited(&text, '"', '"');
    loop {
        let next = strip_innermost(&text, '{', '}');
        if next == text {
            break;
        }
        text = next;
    }
    text = strip_innermost(&text, '[', ']');
    // Keywords, and aggregation operators (which may come before their `by (...)`).
    let keywords = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
    ];
    let chars: Vec<char> = text.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let mut skip_group = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let called = j < chars.len() && chars[j] == '(';
            if matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                // The parenthesised label list that follows names labels, not metrics.
                skip_group = called;
                continue;
            }
            if !called && !keywords.contains(&word.as_str()) && !skip_group {
                names.push(word);
            }
            continue;
        }
        if c == '(' && skip_group {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            skip_group = false;
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    names.sort();
    names.dedup();
    names
}

fn strip_delimited(text: &str, open: char, close: char) -> String {
    let mut out = String::new();
    let mut inside = false;
    for c in text.chars() {
        if !inside && c == open {
            inside = true;
        } else if inside && c == close {
            inside = false;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

/// Removes every innermost `open … close` span (one nesting level per call).
fn strip_innermost(text: &str, open: char, close: char) -> String {
    let mut out = String::new();
    let mut pending: Option<String> = None;
    for c in text.chars() {
        match (&mut pending, c) {
            (_, c) if c == open => {
                if let Some(p) = pending.take() {
                    out.push_str(&p);
                }
                pending = Some(c.to_string());
            }
            (Some(_), c) if c == close => pending = None,
            (Some(p), c) => p.push(c),
            (None, c) => out.push(c),
        }
    }
    if let Some(p) = pending {
        out.push_str(&p);
    }
    out
}

/// The PrometheusRule as `helm template` renders it with an EKS install's values (the
/// defaults alone name no Fargate subnets and are refused) and a runbook URL (the alert
/// tests expect `https://docs.example.com/spillway/metrics.md#<alert>`).
pub fn rendered_prometheus_rule() -> anyhow::Result<Value> {
    rendered_prometheus_rule_with(&[])
}

/// [`rendered_prometheus_rule`] with more `--set KEY=VALUE` values.
pub fn rendered_prometheus_rule_with(sets: &[&str]) -> anyhow::Result<Value> {
    let chart = chart_dir().display().to_string();
    let values = chart_dir().join("ci/eks-values.yaml").display().to_string();
    let mut args = vec![
        "template",
        "s",
        &chart,
        "--values",
        &values,
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "prometheusRule.runbookUrl=https://docs.example.com/spillway/metrics.md",
        "--show-only",
        "templates/prometheusrule.yaml",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    documents(&helm(&args)?)?
        .pop()
        .context("no PrometheusRule rendered")
}

/// Every PromQL expression the chart ships: the alert rules' `expr` as the
/// PrometheusRule renders them with the default values, and the dashboard's queries.
pub fn shipped_queries() -> anyhow::Result<Vec<String>> {
    let rule = rendered_prometheus_rule()?;
    let mut queries = Vec::new();
    for group in rule["spec"]["groups"]
        .as_array()
        .context("no rule groups")?
    {
        for rule in group["rules"].as_array().context("a group without rules")? {
            queries.push(
                rule["expr"]
                    .as_str()
                    .context("a rule without expr")?
                    .to_owned(),
            );
        }
    }
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(
        chart_dir().join("files/dashboard.json"),
    )?)?;
    for panel in dashboard["panels"]
        .as_array()
        .context("dashboard: no panels")?
        .iter()
        .filter(|panel| panel["type"] != "row")
    {
        for target in panel["targets"]
            .as_array()
            .context("a panel without targets")?
        {
            queries.push(
                target["expr"]
                    .as_str()
                    .context("a target without expr")?
                    .to_owned(),
            );
        }
    }
    Ok(queries)
}

/// The metric names of the shipped queries that `metrics` (a `/metrics` scrape) lacks;
/// `foreign` lists names other components export (the apiserver's), which are allowed.
pub fn missing_metrics(metrics: &str, foreign: &[&str]) -> anyhow::Result<Vec<String>> {
    let exported: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let mut missing = Vec::new();
    for query in shipped_queries()? {
        for name in promql_metric_names(&query) {
            if !exported.contains(name.as_str()) && !foreign.contains(&name.as_str()) {
                missing.push(format!("{name} (in `{query}`)"));
            }
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::promql_metric_names;

    #[test]
    fn metric_names_come_out_of_queries_and_nothing_else() {
        assert_eq!(
            promql_metric_names(
                r#"histogram_quantile(0.99, sum by (le, provider) (rate(spillway_provider_request_duration_seconds_bucket{result="error"}[5m])))"#
            ),
            ["spillway_provider_request_duration_seconds_bucket"]
        );
        assert_eq!(
            promql_metric_names(
                r#"sum(spillway_burst_cost_usd_per_hour) > max(spillway_burst_budget_usd_per_hour{scope="cluster"})"#
            ),
            [
                "spillway_burst_budget_usd_per_hour",
                "spillway_burst_cost_usd_per_hour"
            ]
        );
        assert_eq!(
            promql_metric_names(
                "max by (namespace, workload) (spillway_burst_ratio) > {{ .Values.prometheusRule.burstRatioThreshold }}"
            ),
            ["spillway_burst_ratio"]
        );
        assert_eq!(
            promql_metric_names("(max(up) < 1) or absent(kube_pod_info) == bool 1e3"),
            ["kube_pod_info", "up"]
        );
    }
}
