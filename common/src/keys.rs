//! Annotation, label and taint keys that make up Spillway's API (DESIGN §2 and §5).

/// Opt-in annotation: `"true"` lets a workload burst.
pub const BURST: &str = "spillway.io/burst";
/// Which virtual node a workload bursts to: `fargate` or `aci`.
pub const PROVIDER: &str = "spillway.io/provider";
/// Replicas beyond this many local ones always burst.
pub const MAX_LOCAL: &str = "spillway.io/max-local";
/// Cap on burst replicas: an integer or `"N%"` of `spec.replicas`, rounded up.
pub const MAX_BURST: &str = "spillway.io/max-burst";
/// Per-workload override of the operator's `capacityThreshold`.
pub const CAPACITY_THRESHOLD: &str = "spillway.io/capacity-threshold";
/// Per-workload override of the operator's `hpaThreshold`.
pub const HPA_THRESHOLD: &str = "spillway.io/hpa-threshold";
/// `"true"` asks for Fargate Spot capacity.
pub const SPOT: &str = "spillway.io/spot";
/// Budget of a workload's burst pods, in estimated USD per hour.
pub const MAX_USD_PER_HOUR: &str = "spillway.io/max-usd-per-hour";

/// Label Spillway writes on admitted pods: `local` or `burst`.
pub const PLACEMENT: &str = "spillway.io/placement";
/// Label Spillway writes with the rule that decided the placement.
pub const REASON: &str = "spillway.io/reason";
/// Annotation carrying the admission request UID that made the decision.
pub const DECISION: &str = "spillway.io/decision";
/// Annotation the webhook writes in shadow mode on a pod it would have burst:
/// `<provider>: <reason>` (the pod itself is left where the scheduler puts it).
pub const WOULD_BURST: &str = "spillway.io/would-burst";
/// Upstream annotation that makes ReplicaSets remove low-cost pods first on scale-in.
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// Deletion cost Spillway gives burst pods so they go first on scale-in.
pub const BURST_DELETION_COST: &str = "-1000";

/// Node label that marks a virtual-kubelet node (virtual-kubelet's own convention).
pub const NODE_TYPE_LABEL: &str = "type";
/// Value of [`NODE_TYPE_LABEL`] on virtual nodes.
pub const NODE_TYPE_VIRTUAL: &str = "virtual-kubelet";
/// Node label naming the provider behind a virtual node.
pub const NODE_PROVIDER_LABEL: &str = "spillway.io/provider";
/// Taint key every virtual node carries (virtual-kubelet's own convention).
pub const VIRTUAL_NODE_TAINT: &str = "virtual-kubelet.io/provider";
/// Taint a virtual node adds while its provider fails or throttles persistently.
pub const PROVIDER_DEGRADED_TAINT: &str = "spillway.io/provider-degraded";

/// Annotation the controller keeps on a Deployment while it has asked the autoscaler for
/// real nodes for its burst replicas (value: the replicas requested). While it is there,
/// the capacity threshold does not send the workload's pods to the virtual node when a
/// regular node fits them: the room was bought for them.
pub const BACKFILL: &str = "spillway.io/backfill";
/// Label on Spillway's backfill objects (placeholder pods, CapacityBuffers): the
/// Deployment (`name`, in the object's namespace) they hold capacity for.
pub const BACKFILL_FOR: &str = "spillway.io/backfill-for";
/// The PriorityClass of placeholder pods: negative, so every real pod preempts them.
pub const PLACEHOLDER_PRIORITY_CLASS: &str = "spillway-placeholder";
/// Value of [`PLACEHOLDER_PRIORITY_CLASS`].
pub const PLACEHOLDER_PRIORITY: i32 = -100;
/// Label value of `app.kubernetes.io/managed-by` on objects Spillway creates.
pub const MANAGED_BY: &str = "spillway";

/// Pod annotation the controller writes on a pod of an opted-in workload that the
/// webhook never saw (it fails open): `"true"`.
pub const UNADMITTED: &str = "spillway.io/unadmitted";

/// Pod condition the virtual node sets while its provider refuses to create the pod
/// (capacity, quota, outage, throttling); its `lastTransitionTime` is the first refusal.
/// The controller fails such pods over (DESIGN §4 "Failover").
pub const PROVIDER_REFUSED_CONDITION: &str = "spillway.io/ProviderRefused";

/// Deployment annotation the controller writes when it fails a workload's pods over:
/// `provider=<unix seconds until>` pairs, comma-separated; the decision does not use a
/// provider listed here until then.
pub const FAILOVER: &str = "spillway.io/failover";
