//! The operator config (DESIGN §2): thresholds, default provider, rebalance, pending spill
//! and pricing, read from a YAML file, validated, and reloaded live. An invalid file is
//! refused with a message naming the key, and the last good config stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// A burst target.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// AWS Fargate through ECS `RunTask`.
    #[default]
    Fargate,
    /// Azure Container Instances.
    Aci,
}

impl Provider {
    /// The lower-case name used in annotations, labels and node names.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Fargate => "fargate",
            Provider::Aci => "aci",
        }
    }

    /// Parses an annotation value (`fargate` or `aci`).
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "fargate" => Some(Provider::Fargate),
            "aci" => Some(Provider::Aci),
            _ => None,
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a workload's burst pods go: one provider, an ordered list of two (the first
/// whose virtual node can take the pod), or `auto`, whichever usable virtual node runs
/// the pod's size cheaper. Written `fargate`, `aci`, `fargate,aci`, `aci,fargate` or
/// `auto`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(try_from = "String", into = "String")]
pub enum ProviderChoice {
    /// AWS Fargate only.
    #[default]
    Fargate,
    /// Azure Container Instances only.
    Aci,
    /// Fargate, else ACI.
    FargateThenAci,
    /// ACI, else Fargate.
    AciThenFargate,
    /// The cheaper of the providers whose virtual node can take the pod.
    Auto,
}

impl ProviderChoice {
    /// Parses an annotation or config value: `auto`, or a comma-separated list of
    /// distinct providers in order of preference.
    pub fn parse(value: &str) -> Option<Self> {
        if value.trim() == "auto" {
            return Some(ProviderChoice::Auto);
        }
        let mut providers = value.split(',').map(|p| Provider::parse(p.trim()));
        let first = providers.next()??;
        let second = providers.next().map(|p| p.filter(|p| *p != first));
        if providers.next().is_some() {
            return None;
        }
        match (first, second) {
            (first, None) => Some(first.into()),
            (_, Some(None)) => None,
            (Provider::Fargate, Some(Some(Provider::Aci))) => Some(ProviderChoice::FargateThenAci),
            (Provider::Aci, Some(Some(Provider::Fargate))) => Some(ProviderChoice::AciThenFargate),
            _ => None,
        }
    }

    /// The providers to try, in order; `None` for `auto`.
    pub fn order(self) -> Option<&'static [Provider]> {
        match self {
            ProviderChoice::Fargate => Some(&[Provider::Fargate]),
            ProviderChoice::Aci => Some(&[Provider::Aci]),
            ProviderChoice::FargateThenAci => Some(&[Provider::Fargate, Provider::Aci]),
            ProviderChoice::AciThenFargate => Some(&[Provider::Aci, Provider::Fargate]),
            ProviderChoice::Auto => None,
        }
    }

    /// Whether `provider` is one this choice may use.
    pub fn allows(self, provider: Provider) -> bool {
        self.order().is_none_or(|order| order.contains(&provider))
    }

    /// The provider to price a pod at before it is placed: the first listed, else
    /// Fargate.
    pub fn for_pricing(self) -> Provider {
        self.order()
            .and_then(|order| order.first().copied())
            .unwrap_or(Provider::Fargate)
    }
}

impl From<Provider> for ProviderChoice {
    fn from(provider: Provider) -> Self {
        match provider {
            Provider::Fargate => ProviderChoice::Fargate,
            Provider::Aci => ProviderChoice::Aci,
        }
    }
}

impl TryFrom<String> for ProviderChoice {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value).ok_or_else(|| {
            format!(
                "unknown provider {value:?}: expected \"fargate\", \"aci\", \"auto\" or an ordered list such as \"fargate,aci\""
            )
        })
    }
}

impl From<ProviderChoice> for String {
    fn from(choice: ProviderChoice) -> Self {
        choice.to_string()
    }
}

impl std::fmt::Display for ProviderChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.order() {
            Some(order) => {
                let names: Vec<&str> = order.iter().map(|p| p.as_str()).collect();
                f.write_str(&names.join(","))
            }
            None => f.write_str("auto"),
        }
    }
}

/// Rebalance-back settings (DESIGN §4).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RebalanceConfig {
    /// Whether burst pods are moved back when capacity returns.
    pub enabled: bool,
    /// Cluster request utilization under which moving back starts.
    pub below_utilization: f64,
    /// How long utilization must stay low before moving back.
    pub cooldown_seconds: u64,
    /// Eviction rate limit.
    pub max_evictions_per_minute: u32,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            below_utilization: 0.6,
            cooldown_seconds: 300,
            max_evictions_per_minute: 10,
        }
    }
}

/// Pending-spill settings (DESIGN §4).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PendingSpillConfig {
    /// How long an opted-in pod may stay unschedulable before it may use the virtual node.
    pub after_seconds: u64,
}

impl Default for PendingSpillConfig {
    fn default() -> Self {
        Self { after_seconds: 60 }
    }
}

/// Failover settings (DESIGN §4 "Failover"): a burst pod its provider keeps refusing
/// (capacity, quota, outage) is handed back to be decided again without that provider.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// How long a provider may refuse to create a pod before the pod is failed over.
    pub after_seconds: u64,
    /// How long the workload's new replicas then avoid that provider.
    pub cooldown_seconds: u64,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            after_seconds: 30,
            cooldown_seconds: 300,
        }
    }
}

/// How Spillway asks the cluster's autoscaler for real nodes for burst replicas (DESIGN §4).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum BackfillMode {
    /// A `CapacityBuffer` when the cluster serves the CRD, else placeholder pods.
    #[default]
    Auto,
    /// A `CapacityBuffer` (`autoscaling.x-k8s.io`) per bursting workload.
    CapacityBuffer,
    /// Low-priority pause pods with the burst pods' requests, preempted by real pods.
    Placeholders,
    /// No request: burst replicas come home only when utilization drops.
    Off,
}

impl BackfillMode {
    /// The camelCase name used in the config, metrics and `spillway status`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackfillMode::Auto => "auto",
            BackfillMode::CapacityBuffer => "capacityBuffer",
            BackfillMode::Placeholders => "placeholders",
            BackfillMode::Off => "off",
        }
    }
}

/// Backfill settings: burst is a bridge until real nodes arrive (DESIGN §4).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BackfillConfig {
    /// How capacity is requested.
    pub mode: BackfillMode,
    /// How long a workload must have had burst replicas before capacity is requested
    /// (a short spike buys nothing).
    pub after_seconds: u64,
    /// Cap on the CPU requested across the cluster (a Kubernetes quantity); none by default.
    pub max_cpu: Option<String>,
    /// Cap on the memory requested across the cluster (a Kubernetes quantity); none by
    /// default.
    pub max_memory: Option<String>,
    /// The image placeholder pods run with the argument `pause` (the chart sets Spillway's
    /// own, whose `spillway pause` sleeps until stopped); placeholders mode needs it.
    pub placeholder_image: Option<String>,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        Self {
            mode: BackfillMode::Auto,
            after_seconds: 60,
            max_cpu: None,
            max_memory: None,
            placeholder_image: None,
        }
    }
}

impl BackfillConfig {
    /// Whether backfill is on at all.
    pub fn enabled(&self) -> bool {
        self.mode != BackfillMode::Off
    }

    /// `maxCpu` in millicores (`None`: unlimited). Checked by `validate`.
    pub fn max_cpu_millis(&self) -> Option<u64> {
        self.max_cpu
            .as_deref()
            .and_then(|q| crate::quantity::cpu_millis(q).ok())
    }

    /// `maxMemory` in bytes (`None`: unlimited). Checked by `validate`.
    pub fn max_memory_bytes(&self) -> Option<u64> {
        self.max_memory
            .as_deref()
            .and_then(|q| crate::quantity::bytes(q).ok())
    }
}

/// Cost budget (DESIGN §2).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// Cluster-wide cap on the estimated USD per hour of all burst pods; none by default.
    pub max_usd_per_hour: Option<f64>,
}

/// Hourly list prices of one provider, in USD.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Price {
    /// USD per vCPU-hour.
    pub vcpu_hour: f64,
    /// USD per GB-hour of memory.
    pub gb_hour: f64,
}

/// Prices per provider.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PricingConfig {
    /// Fargate prices; default: Linux/x86 list prices (0.04048 per vCPU-hour, 0.004445 per GB-hour).
    pub fargate: Price,
    /// ACI prices; default: Linux list prices (0.0000135 per vCPU-second, 0.0000015 per GB-second).
    pub aci: Price,
}

impl Default for PricingConfig {
    fn default() -> Self {
        Self {
            fargate: Price {
                vcpu_hour: 0.04048,
                gb_hour: 0.004445,
            },
            aci: Price {
                vcpu_hour: 0.0486,
                gb_hour: 0.0054,
            },
        }
    }
}

impl PricingConfig {
    /// Prices for `provider`.
    pub fn for_provider(&self, provider: Provider) -> &Price {
        match provider {
            Provider::Fargate => &self.fargate,
            Provider::Aci => &self.aci,
        }
    }
}

/// Whether Spillway acts on its decisions.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Decide and act: the webhook places pods, the controller moves them.
    #[default]
    Enforce,
    /// Decide and record only: the webhook annotates a pod it would burst
    /// (`spillway.io/would-burst`) and counts the decision, but places nothing; the
    /// controller plans and counts what it would do (`spillway_shadow_actions_total`) but
    /// changes nothing. For watching Spillway before turning it on.
    Shadow,
}

/// The whole operator config.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct OperatorConfig {
    /// `enforce` (the default) or `shadow`: decide and record without acting.
    pub mode: Mode,
    /// Request utilization (CPU or memory) at which pods of opted-in workloads burst.
    pub capacity_threshold: f64,
    /// HPA `desiredReplicas / maxReplicas` at which replicas beyond the baseline burst.
    pub hpa_threshold: f64,
    /// Provider for workloads that name none (`auto`: the cheaper one).
    pub default_provider: ProviderChoice,
    /// Rebalance-back settings.
    pub rebalance: RebalanceConfig,
    /// Pending-spill settings.
    pub pending_spill: PendingSpillConfig,
    /// Failover between providers.
    pub failover: FailoverConfig,
    /// Cost budget.
    pub budget: BudgetConfig,
    /// Prices used for cost metrics and `explain-pod`.
    pub pricing: PricingConfig,
    /// Backfill: real nodes requested for burst replicas.
    pub backfill: BackfillConfig,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Enforce,
            capacity_threshold: 0.85,
            hpa_threshold: 0.8,
            default_provider: ProviderChoice::Fargate,
            rebalance: RebalanceConfig::default(),
            pending_spill: PendingSpillConfig::default(),
            failover: FailoverConfig::default(),
            budget: BudgetConfig::default(),
            pricing: PricingConfig::default(),
            backfill: BackfillConfig::default(),
        }
    }
}

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML was malformed, had an unknown key, or a value of the wrong type.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// A value was out of range.
    #[error("config {path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The offending key, dotted.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn unit_interval(key: &'static str, value: f64) -> Result<(), (&'static str, String)> {
    if value > 0.0 && value <= 1.0 {
        Ok(())
    } else {
        Err((
            key,
            format!("must be greater than 0 and at most 1, got {value}"),
        ))
    }
}

/// The largest USD amount (per hour, or per unit-hour) a price or budget may name: far
/// above any real one, and it keeps sums of many pods finite.
pub const MAX_USD: f64 = 1_000_000.0;
/// The longest wait a config may name: one day.
pub const MAX_SECONDS: u64 = 86_400;
/// The most evictions per minute a config may allow.
pub const MAX_EVICTIONS_PER_MINUTE: u32 = 1_000;

fn non_negative_price(key: &'static str, value: f64) -> Result<(), (&'static str, String)> {
    if value.is_finite() && (0.0..=MAX_USD).contains(&value) {
        Ok(())
    } else {
        Err((
            key,
            format!("must be a price from 0 to {MAX_USD} USD, got {value}"),
        ))
    }
}

fn at_most_a_day(key: &'static str, value: u64) -> Result<(), (&'static str, String)> {
    if value <= MAX_SECONDS {
        Ok(())
    } else {
        Err((
            key,
            format!("must be at most {MAX_SECONDS} seconds (one day), got {value}"),
        ))
    }
}

impl OperatorConfig {
    /// Checks every range; returns the dotted key and what is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        unit_interval("capacityThreshold", self.capacity_threshold)?;
        unit_interval("hpaThreshold", self.hpa_threshold)?;
        unit_interval(
            "rebalance.belowUtilization",
            self.rebalance.below_utilization,
        )?;
        if let Some(budget) = self.budget.max_usd_per_hour {
            non_negative_price("budget.maxUsdPerHour", budget)?;
        }
        at_most_a_day("rebalance.cooldownSeconds", self.rebalance.cooldown_seconds)?;
        at_most_a_day(
            "pendingSpill.afterSeconds",
            self.pending_spill.after_seconds,
        )?;
        at_most_a_day("failover.afterSeconds", self.failover.after_seconds)?;
        at_most_a_day("failover.cooldownSeconds", self.failover.cooldown_seconds)?;
        if self.rebalance.max_evictions_per_minute > MAX_EVICTIONS_PER_MINUTE {
            return Err((
                "rebalance.maxEvictionsPerMinute",
                format!(
                    "must be at most {MAX_EVICTIONS_PER_MINUTE}, got {}",
                    self.rebalance.max_evictions_per_minute
                ),
            ));
        }
        if self.rebalance.max_evictions_per_minute == 0 && self.rebalance.enabled {
            return Err((
                "rebalance.maxEvictionsPerMinute",
                "must be at least 1 while rebalance is enabled".into(),
            ));
        }
        non_negative_price("pricing.fargate.vcpuHour", self.pricing.fargate.vcpu_hour)?;
        non_negative_price("pricing.fargate.gbHour", self.pricing.fargate.gb_hour)?;
        non_negative_price("pricing.aci.vcpuHour", self.pricing.aci.vcpu_hour)?;
        non_negative_price("pricing.aci.gbHour", self.pricing.aci.gb_hour)?;
        at_most_a_day("backfill.afterSeconds", self.backfill.after_seconds)?;
        if let Some(cpu) = &self.backfill.max_cpu {
            crate::quantity::cpu_millis(cpu).map_err(|_| {
                (
                    "backfill.maxCpu",
                    format!("must be a CPU quantity such as 8 or 500m, got {cpu:?}"),
                )
            })?;
        }
        if let Some(memory) = &self.backfill.max_memory {
            crate::quantity::bytes(memory).map_err(|_| {
                (
                    "backfill.maxMemory",
                    format!("must be a memory quantity such as 16Gi, got {memory:?}"),
                )
            })?;
        }
        Ok(())
    }

    /// Parses and validates YAML text; `path` only names the source in errors.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        // An empty file means "all defaults".
        let config: OperatorConfig = if text.trim().is_empty() {
            OperatorConfig::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?
        };
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_owned(),
                key,
                message,
            })?;
        Ok(config)
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text, path)
    }
}

/// The config in force, shared by readers and swapped by the reloader.
pub type SharedConfig = Arc<ArcSwap<OperatorConfig>>;

/// Metrics of the config in force, one set per process whatever runs in it.
#[derive(Clone, Debug)]
pub struct ConfigMetrics {
    /// `spillway_config_generation`: configs put in force (1 at start, +1 per change).
    pub generation: prometheus::IntGauge,
    /// `spillway_config_reload_failures_total`: files refused on reload.
    pub reload_failures: prometheus::IntCounter,
    /// `spillway_config_last_reload_successful`: 0 while the file on disk is refused (the
    /// last good config is in force), 1 otherwise; what the config alert fires on.
    pub last_reload_successful: prometheus::IntGauge,
}

impl ConfigMetrics {
    /// Creates and registers the metrics, generation 1.
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            generation: prometheus::IntGauge::new(
                "spillway_config_generation",
                "Operator config generation in force (1 at start, +1 per accepted change)",
            )?,
            reload_failures: prometheus::IntCounter::new(
                "spillway_config_reload_failures_total",
                "Operator config files refused on reload",
            )?,
            last_reload_successful: prometheus::IntGauge::new(
                "spillway_config_last_reload_successful",
                "0 while the operator config file is refused (the last good one is in force), else 1",
            )?,
        };
        registry.register(Box::new(metrics.generation.clone()))?;
        registry.register(Box::new(metrics.reload_failures.clone()))?;
        registry.register(Box::new(metrics.last_reload_successful.clone()))?;
        metrics.generation.set(1);
        metrics.last_reload_successful.set(1);
        Ok(metrics)
    }
}

/// Watches `path` and swaps each valid new version into `shared` (counting a
/// generation); an invalid version is logged with the key at fault, counted, passed to
/// `on_refused`, and the old one stays.
pub async fn watch_and_reload(
    path: PathBuf,
    shared: SharedConfig,
    interval: Duration,
    metrics: ConfigMetrics,
    on_refused: impl Fn(&ConfigError) + Send + 'static,
    shutdown: CancellationToken,
) {
    crate::file_watch::on_change(vec![path.clone()], interval, shutdown, move || {
        match OperatorConfig::load(&path) {
            Ok(config) => {
                metrics.last_reload_successful.set(1);
                if **shared.load() != config {
                    tracing::info!(path = %path.display(), "operator config reloaded");
                    shared.store(Arc::new(config));
                    metrics.generation.inc();
                }
            }
            Err(error) => {
                tracing::error!(%error, "operator config refused; the last good one stays in force");
                metrics.reload_failures.inc();
                metrics.last_reload_successful.set(0);
                on_refused(&error);
            }
        }
        // An invalid file is not read again until it changes again.
        true
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<OperatorConfig, ConfigError> {
        OperatorConfig::from_yaml(text, Path::new("config.yaml"))
    }

    #[test]
    fn durations_rates_and_prices_have_upper_bounds() {
        for (text, key, says) in [
            (
                "rebalance:\n  cooldownSeconds: 86401",
                "rebalance.cooldownSeconds",
                "at most 86400 seconds",
            ),
            (
                "pendingSpill:\n  afterSeconds: 18446744073709551615",
                "pendingSpill.afterSeconds",
                "one day",
            ),
            (
                "rebalance:\n  maxEvictionsPerMinute: 1001",
                "rebalance.maxEvictionsPerMinute",
                "at most 1000",
            ),
            (
                "budget:\n  maxUsdPerHour: 1e12",
                "budget.maxUsdPerHour",
                "from 0 to 1000000",
            ),
            (
                "pricing:\n  fargate: {vcpuHour: .inf, gbHour: 0.1}",
                "pricing.fargate.vcpuHour",
                "price",
            ),
        ] {
            match parse(text) {
                Err(ConfigError::Invalid {
                    key: k, message, ..
                }) => {
                    assert_eq!(k, key, "{text}");
                    assert!(message.contains(says), "{text}: {message}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(
            parse("rebalance:\n  cooldownSeconds: 86400\npendingSpill:\n  afterSeconds: 0").is_ok()
        );
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.capacity_threshold, 0.85);
        assert_eq!(config.hpa_threshold, 0.8);
        assert_eq!(config.default_provider, ProviderChoice::Fargate);
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let config = parse(
            "capacityThreshold: 0.5\ndefaultProvider: aci\nrebalance:\n  cooldownSeconds: 10\n",
        )
        .unwrap();
        assert_eq!(config.capacity_threshold, 0.5);
        assert_eq!(config.default_provider, ProviderChoice::Aci);
        let ordered = parse("defaultProvider: aci,fargate\n").unwrap();
        assert_eq!(ordered.default_provider, ProviderChoice::AciThenFargate);
        assert_eq!(ordered.default_provider.for_pricing(), Provider::Aci);
        let auto = parse("defaultProvider: auto\n").unwrap();
        assert_eq!(auto.default_provider, ProviderChoice::Auto);
        assert_eq!(auto.default_provider.for_pricing(), Provider::Fargate);
        assert_eq!(config.rebalance.cooldown_seconds, 10);
        assert!(config.rebalance.enabled);
        assert_eq!(config.hpa_threshold, 0.8);
    }

    #[test]
    fn out_of_range_value_names_its_key() {
        let error = parse("hpaThreshold: 1.5").unwrap_err().to_string();
        assert!(error.contains("hpaThreshold"), "{error}");
        assert!(error.contains("1.5"), "{error}");
        let error = parse("capacityThreshold: 0").unwrap_err().to_string();
        assert!(error.contains("capacityThreshold"), "{error}");
    }

    #[test]
    fn backfill_defaults_parse_and_refusals_name_the_key() {
        let defaults = parse("").unwrap().backfill;
        assert_eq!(defaults.mode, BackfillMode::Auto);
        assert_eq!(defaults.after_seconds, 60);
        assert_eq!(defaults.max_cpu_millis(), None);
        let config = parse(
            "backfill:\n  mode: placeholders\n  afterSeconds: 5\n  maxCpu: 1500m\n  maxMemory: 2Gi\n",
        )
        .unwrap()
        .backfill;
        assert_eq!(config.mode, BackfillMode::Placeholders);
        assert_eq!(config.max_cpu_millis(), Some(1500));
        assert_eq!(config.max_memory_bytes(), Some(2 << 30));
        assert!(
            !parse("backfill:\n  mode: off\n")
                .unwrap()
                .backfill
                .enabled()
        );
        assert_eq!(
            parse("backfill:\n  mode: capacityBuffer\n")
                .unwrap()
                .backfill
                .mode,
            BackfillMode::CapacityBuffer
        );
        for (text, key) in [
            ("backfill:\n  maxCpu: lots\n", "backfill.maxCpu"),
            ("backfill:\n  maxMemory: 2Gb\n", "backfill.maxMemory"),
            (
                "backfill:\n  afterSeconds: 90000\n",
                "backfill.afterSeconds",
            ),
        ] {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains(key), "{text}: {error}");
        }
        let error = parse("backfill:\n  mode: karpenter\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("backfill.mode"), "{error}");
    }

    #[test]
    fn budget_is_optional_and_checked() {
        let config = parse("budget:\n  maxUsdPerHour: 2.5\n").unwrap();
        assert_eq!(config.budget.max_usd_per_hour, Some(2.5));
        let error = parse("budget:\n  maxUsdPerHour: -1\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("budget.maxUsdPerHour"), "{error}");
    }

    #[test]
    fn a_provider_choice_is_one_provider_an_ordered_pair_or_auto() {
        for (text, choice) in [
            ("fargate", ProviderChoice::Fargate),
            ("aci", ProviderChoice::Aci),
            ("auto", ProviderChoice::Auto),
            ("fargate,aci", ProviderChoice::FargateThenAci),
            (" aci , fargate ", ProviderChoice::AciThenFargate),
        ] {
            assert_eq!(ProviderChoice::parse(text), Some(choice), "{text}");
            assert_eq!(ProviderChoice::parse(&choice.to_string()), Some(choice));
        }
        for bad in [
            "",
            "gcp",
            "fargate,fargate",
            "fargate,aci,fargate",
            "fargate,",
            "auto,aci",
        ] {
            assert_eq!(ProviderChoice::parse(bad), None, "{bad:?}");
        }
        assert!(ProviderChoice::Fargate.allows(Provider::Fargate));
        assert!(!ProviderChoice::Fargate.allows(Provider::Aci));
        assert!(ProviderChoice::Auto.allows(Provider::Aci));
        let error = parse("defaultProvider: fargate,fargate")
            .unwrap_err()
            .to_string();
        assert!(error.contains("fargate,aci"), "{error}");
    }

    #[test]
    fn unknown_key_and_wrong_type_are_refused() {
        let error = parse("capacityTreshold: 0.5").unwrap_err().to_string();
        assert!(error.contains("capacityTreshold"), "{error}");
        let error = parse("defaultProvider: gcp").unwrap_err().to_string();
        assert!(
            error.contains("gcp") || error.contains("variant"),
            "{error}"
        );
        let error = parse("capacityThreshold: high").unwrap_err().to_string();
        assert!(error.contains("capacityThreshold"), "{error}");
    }

    #[tokio::test]
    async fn reload_keeps_last_good_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "capacityThreshold: 0.5").unwrap();
        let shared: SharedConfig =
            Arc::new(ArcSwap::from_pointee(OperatorConfig::load(&path).unwrap()));
        let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let counter = refused.clone();
        let metrics = ConfigMetrics::register(&prometheus::Registry::new()).unwrap();
        tokio::spawn(watch_and_reload(
            path.clone(),
            shared.clone(),
            Duration::from_millis(20),
            metrics.clone(),
            move |_| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            },
            shutdown.clone(),
        ));
        let wait_for = |check: &dyn Fn() -> bool| {
            let start = std::time::Instant::now();
            while !check() && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        // Make the mtime differ even on coarse-grained file systems.
        tokio::time::sleep(Duration::from_millis(30)).await;
        std::fs::write(&path, "capacityThreshold: 7").unwrap();
        let r = refused.clone();
        tokio::task::spawn_blocking(move || {
            wait_for(&|| r.load(std::sync::atomic::Ordering::SeqCst) > 0)
        })
        .await
        .unwrap();
        assert_eq!(refused.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(shared.load().capacity_threshold, 0.5);
        assert_eq!(metrics.last_reload_successful.get(), 0);

        tokio::time::sleep(Duration::from_millis(30)).await;
        std::fs::write(&path, "capacityThreshold: 0.7").unwrap();
        let s = shared.clone();
        tokio::task::spawn_blocking(move || wait_for(&|| s.load().capacity_threshold == 0.7))
            .await
            .unwrap();
        assert_eq!(shared.load().capacity_threshold, 0.7);
        assert_eq!(metrics.generation.get(), 2);
        assert_eq!(metrics.reload_failures.get(), 1);
        assert_eq!(metrics.last_reload_successful.get(), 1);
        shutdown.cancel();
    }
}
