//! Drives the admission router in-process with captured AdmissionReviews against fixture
//! cluster states, applying each returned patch to the pod and checking the result.

use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use spillway_cluster::cluster_state;
use spillway_common::config::OperatorConfig;
use spillway_webhook::inflight::{DEFAULT_TTL, InFlight};
use spillway_webhook::metrics::WebhookMetrics;
use spillway_webhook::review::AdmissionReviewResponse;
use spillway_webhook::server::{WebhookState, router};
use tower::ServiceExt;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture exists")
}

fn state(cluster: &str) -> WebhookState {
    state_of(&fixture(cluster))
}

fn state_of(cluster: &[u8]) -> WebhookState {
    let index = cluster_state::load(cluster).expect("cluster loads");
    WebhookState {
        index: Arc::new(RwLock::new(index)),
        in_flight: Arc::new(Mutex::new(InFlight::new(DEFAULT_TTL))),
        config: Arc::new(ArcSwap::from_pointee(OperatorConfig::default())),
        metrics: WebhookMetrics::register(&prometheus::Registry::new()).expect("metrics register"),
        seal: spillway_webhook::decision_seal::DecisionSeal::random(),
    }
}

async fn post(state: &WebhookState, body: Vec<u8>) -> (StatusCode, Value) {
    let request = Request::post("/mutate")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("request builds");
    let response = router(state.clone())
        .oneshot(request)
        .await
        .expect("router answers");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, serde_json::from_slice(&bytes).expect("JSON answer"))
}

/// Applies the answer's patch to the review's pod; returns (patched pod, answer).
async fn admit(state: &WebhookState, review: &Value) -> (Value, AdmissionReviewResponse) {
    let (status, body) = post(state, serde_json::to_vec(review).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["response"]["patch"].is_string() || body["response"].get("patch").is_none(),
        "patch must be base64 text: {body}"
    );
    let answer: AdmissionReviewResponse = serde_json::from_value(body).expect("a review response");
    assert!(answer.response.allowed);
    assert_eq!(
        answer.response.uid,
        review["request"]["uid"].as_str().unwrap()
    );
    let mut pod = review["request"]["object"].clone();
    if let Some(ops) = answer.response.decoded_patch() {
        let patch: json_patch::Patch =
            serde_json::from_value(Value::Array(ops)).expect("valid JSON patch");
        json_patch::patch(&mut pod, &patch).expect("patch applies to the pod");
    }
    (pod, answer)
}

fn review(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

#[tokio::test]
async fn overflow_pod_bursts_with_toleration_affinity_and_labels() {
    let state = state("cluster-full.json");
    let original = review("review-web.json");
    let (pod, answer) = admit(&state, &original).await;
    assert_eq!(answer.response.patch_type.as_deref(), Some("JSONPatch"));
    let labels = &pod["metadata"]["labels"];
    assert_eq!(labels["spillway.io/placement"], "burst");
    assert_eq!(labels["spillway.io/reason"], "capacity");
    assert_eq!(labels["app"], "web");
    // The deciding review's uid, sealed.
    let decision = pod["metadata"]["annotations"]["spillway.io/decision"]
        .as_str()
        .unwrap_or_default();
    let uid = original["request"]["uid"].as_str().unwrap_or_default();
    assert!(decision.starts_with(&format!("{uid}.")), "{decision}");
    assert_eq!(spillway_webhook::decision_seal::review_uid(decision), uid);
    assert_eq!(
        pod["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"],
        "-1000"
    );
    let tolerations = pod["spec"]["tolerations"].as_array().unwrap();
    assert_eq!(tolerations.len(), 3, "the two defaults kept, ours appended");
    assert_eq!(
        tolerations[0],
        original["request"]["object"]["spec"]["tolerations"][0]
    );
    assert_eq!(
        tolerations[2],
        json!({"key": "virtual-kubelet.io/provider", "operator": "Equal", "value": "fargate", "effect": "NoSchedule"})
    );
    assert_eq!(
        pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"],
        json!([{"matchExpressions": [
            {"key": "type", "operator": "In", "values": ["virtual-kubelet"]},
            {"key": "spillway.io/provider", "operator": "In", "values": ["fargate"]}
        ]}])
    );
    // Everything else is untouched.
    let mut rest = pod.clone();
    let mut original_rest = original["request"]["object"].clone();
    for (parent, key) in [
        ("metadata", "labels"),
        ("metadata", "annotations"),
        ("spec", "tolerations"),
        ("spec", "affinity"),
    ] {
        rest[parent].as_object_mut().unwrap().remove(key);
        original_rest[parent].as_object_mut().unwrap().remove(key);
    }
    assert_eq!(rest, original_rest);

    // Reinvocation: the patched pod comes back and nothing more is added.
    let mut again = original.clone();
    again["request"]["object"] = pod.clone();
    let (pod_again, answer_again) = admit(&state, &again).await;
    assert!(
        answer_again.response.patch.is_none(),
        "second pass must add nothing"
    );
    assert_eq!(pod_again, pod);
}

#[tokio::test]
async fn a_template_that_carries_a_burst_decision_gets_the_webhooks_own() {
    // The template copies a burst pod's annotation and label: one this very webhook
    // sealed a moment ago, for a pod of the ReplicaSet before the template edit. The
    // webhook decides afresh: local (the cluster is idle now), labelled so, and without
    // the toleration a burst would add.
    let state = state("cluster-full.json");
    let (burst, _) = admit(&state, &review("review-web.json")).await;
    let copied = burst["metadata"]["annotations"]["spillway.io/decision"].clone();
    let idle = state_of(&fixture("cluster-idle.json"));
    let idle = WebhookState {
        seal: state.seal.clone(),
        ..idle
    };
    let mut forged = review("review-web.json");
    forged["request"]["uid"] = json!("a-later-review");
    let object = &mut forged["request"]["object"]["metadata"];
    object["ownerReferences"][0]["uid"] = json!("00000000-0000-4000-8000-00000000e0e0");
    object["labels"]["spillway.io/placement"] = json!("burst");
    object["annotations"] = json!({"spillway.io/decision": copied});
    let (pod, answer) = admit(&idle, &forged).await;
    assert_eq!(pod["metadata"]["labels"]["spillway.io/placement"], "local");
    let decision = pod["metadata"]["annotations"]["spillway.io/decision"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(
        spillway_webhook::decision_seal::review_uid(decision),
        "a-later-review"
    );
    assert!(pod["spec"]["affinity"].is_null());
    assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 2);
    let warnings = answer.response.warnings.join("\n");
    assert!(warnings.contains("decided afresh"), "{warnings}");
}

#[tokio::test]
async fn shadow_mode_records_the_burst_it_would_make_and_places_nothing() {
    let state = state("cluster-full.json");
    state.config.store(Arc::new(OperatorConfig {
        mode: spillway_common::config::Mode::Shadow,
        ..OperatorConfig::default()
    }));
    let original = review("review-web.json");
    let (pod, _) = admit(&state, &original).await;
    let mut expected = original["request"]["object"].clone();
    expected["metadata"]["annotations"]["spillway.io/would-burst"] = json!("fargate: capacity");
    assert_eq!(pod, expected, "only the would-burst annotation is added");
    // The decision is counted as in enforce mode.
    let decisions = state
        .metrics
        .decisions
        .with_label_values(&["burst", "capacity"])
        .get();
    assert_eq!(decisions, 1);
}

#[tokio::test]
async fn idle_cluster_keeps_pod_local_with_labels_only() {
    let state = state("cluster-idle.json");
    let (pod, _) = admit(&state, &review("review-web.json")).await;
    assert_eq!(pod["metadata"]["labels"]["spillway.io/placement"], "local");
    assert!(pod["spec"]["affinity"].is_null());
    assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn workload_not_opted_in_is_untouched() {
    let state = state("cluster-full.json");
    let original = review("review-batch.json");
    let (pod, answer) = admit(&state, &original).await;
    assert!(answer.response.patch.is_none());
    assert!(answer.response.warnings.is_empty());
    assert_eq!(pod, original["request"]["object"]);
}

#[tokio::test]
async fn ineligible_pod_stays_local_with_a_warning() {
    let state = state("cluster-full.json");
    let (pod, answer) = admit(&state, &review("review-web-hostpath.json")).await;
    assert_eq!(pod["metadata"]["labels"]["spillway.io/placement"], "local");
    assert_eq!(
        pod["metadata"]["labels"]["spillway.io/reason"],
        "ineligible"
    );
    assert_eq!(
        state
            .metrics
            .ineligible
            .with_label_values(&["host-path"])
            .get(),
        1
    );
    assert!(pod["spec"]["affinity"].is_null());
    assert!(
        answer
            .response
            .warnings
            .iter()
            .any(|w| w.contains("host-path")),
        "{:?}",
        answer.response.warnings
    );
}

#[tokio::test]
async fn invalid_annotation_warns_and_is_ignored() {
    let state = state("cluster-full.json");
    let (pod, answer) = admit(&state, &review("review-web-bad-annotation.json")).await;
    assert_eq!(pod["metadata"]["labels"]["spillway.io/placement"], "burst");
    assert!(
        answer
            .response
            .warnings
            .iter()
            .any(|w| w.contains("spillway.io/max-local")),
        "{:?}",
        answer.response.warnings
    );
}

#[tokio::test]
async fn other_kinds_are_allowed_with_a_warning() {
    let state = state("cluster-full.json");
    let (_, answer) = admit(&state, &review("review-configmap.json")).await;
    assert!(answer.response.patch.is_none());
    assert!(answer.response.warnings[0].contains("ConfigMap"));
}

/// The idle cluster with an HPA on shop/web (min 2, max 5) that has just scaled it up,
/// seen by the webhook before the watch shows it: the Deployment and the HPA's status
/// still say 3 replicas, and the ReplicaSet holds 3 pods (max-burst raised to 5).
fn state_before_the_scale_up_shows() -> WebhookState {
    let mut cluster: Value = serde_json::from_slice(&fixture("cluster-idle.json")).unwrap();
    let items = cluster["items"].as_array_mut().unwrap();
    for item in items.iter_mut() {
        if item["kind"] == "Deployment" && item["metadata"]["name"] == "web" {
            item["spec"]["replicas"] = json!(3);
            item["metadata"]["annotations"]["spillway.io/max-burst"] = json!("5");
        }
    }
    items.push(json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                 "minReplicas": 2, "maxReplicas": 5},
        "status": {"currentReplicas": 3, "desiredReplicas": 3}
    }));
    state_of(&serde_json::to_vec(&cluster).unwrap())
}

fn labels(pod: &Value) -> (String, String) {
    let label = |key: &str| {
        pod["metadata"]["labels"][key]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    (label("spillway.io/placement"), label("spillway.io/reason"))
}

#[tokio::test]
async fn pods_of_a_scale_up_the_watch_has_not_shown_yet_burst_for_hpa() {
    let state = state_before_the_scale_up_shows();
    // The 4th and 5th replicas of a batch: 4/5 and 5/5 of maxReplicas, at or over 0.8.
    for (uid, name) in [
        ("uid-4th", "web-7d4b9c6f5-n4"),
        ("uid-5th", "web-7d4b9c6f5-n5"),
    ] {
        let mut review = review("review-web.json");
        review["request"]["uid"] = json!(uid);
        review["request"]["object"]["metadata"]["name"] = json!(name);
        let (pod, _) = admit(&state, &review).await;
        assert_eq!(labels(&pod), ("burst".into(), "hpa".into()), "{name}");
    }
}

#[tokio::test]
async fn a_rollouts_new_replicaset_is_not_taken_for_hpa_pressure() {
    let state = state_before_the_scale_up_shows();
    // The first pod of a new ReplicaSet (a rollout's surge pod): its own ReplicaSet holds
    // none yet, so it says nothing of the HPA's scale.
    let mut review = review("review-web.json");
    let object = &mut review["request"]["object"]["metadata"];
    object["labels"]["pod-template-hash"] = json!("5f6b8c9d7");
    object["generateName"] = json!("web-5f6b8c9d7-");
    object["ownerReferences"][0]["name"] = json!("web-5f6b8c9d7");
    object["ownerReferences"][0]["uid"] = json!("00000000-0000-4000-8000-000000055555");
    let (pod, _) = admit(&state, &review).await;
    assert_eq!(labels(&pod), ("local".into(), "no-pressure".into()));
}

#[tokio::test]
async fn pod_objects_that_do_not_decode_are_allowed_unchanged_with_a_warning() {
    let state = state("cluster-full.json");
    let base = review("review-web.json");
    for (object, warning) in [
        (json!({"spec": {"containers": "web"}}), "not a valid Pod"),
        (json!("a string"), "not a valid Pod"),
        (Value::Null, "has no object"),
    ] {
        let mut bad = base.clone();
        bad["request"]["object"] = object.clone();
        let (_, answer) = admit(&state, &bad).await;
        assert!(answer.response.patch.is_none(), "{object}: patched");
        assert!(
            answer.response.warnings.iter().any(|w| w.contains(warning)),
            "{object}: {:?}",
            answer.response.warnings
        );
    }
}

#[tokio::test]
async fn unparseable_bodies_get_400_with_a_message() {
    let state = state("cluster-full.json");
    for body in [
        &b"not json"[..],
        br#"{"kind": "AdmissionReview"}"#,
        br#"{"request": {"kind": 5}}"#,
    ] {
        let (status, answer) = post(&state, body.to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("AdmissionReview"),
            "{answer}"
        );
    }
}

#[test]
fn pods_not_opted_in_never_wait_for_the_in_flight_table() {
    // Another review holds the in-flight table (as an opted-in pod's decision does).
    let state = state("cluster-full.json");
    let held = state.in_flight.lock().unwrap();
    let (answered, answer) = std::sync::mpsc::channel();
    let reviewer = {
        let state = state.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let (pod, _) = runtime.block_on(admit(&state, &review("review-batch.json")));
            let _ = answered.send(pod);
        })
    };
    // A liveness check, not a timing: before the fix it blocked until the lock was let go.
    let pod = answer.recv_timeout(std::time::Duration::from_secs(30));
    drop(held);
    reviewer.join().unwrap();
    assert_eq!(
        pod.expect("answered while the in-flight table was held"),
        review("review-batch.json")["request"]["object"]
    );
}

#[tokio::test]
async fn parallel_batch_cannot_overshoot_max_burst() {
    // web allows 2 burst replicas and already runs 1 on the virtual node.
    let state = state("cluster-full.json");
    let mut placements = Vec::new();
    for i in 0..4 {
        let mut r = review("review-web.json");
        r["request"]["uid"] = json!(format!("batch-{i}"));
        let (pod, _) = admit(&state, &r).await;
        placements.push(
            pod["metadata"]["labels"]["spillway.io/placement"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(placements, ["burst", "local", "local", "local"]);
    assert_eq!(state.in_flight.lock().unwrap().len(), 4);
    let decisions = state
        .metrics
        .decisions
        .with_label_values(&["local", "max-burst"])
        .get();
    assert_eq!(decisions, 3);
}

#[tokio::test]
async fn bodies_above_the_limit_are_refused_and_large_reviews_below_it_are_answered() {
    let state = state("cluster-full.json");
    // A 3 MiB pod (an annotation full of text) is still answered.
    let mut big = review("review-web.json");
    big["request"]["object"]["metadata"]["annotations"] = json!({"filler": "x".repeat(3 << 20)});
    let (status, body) = post(&state, serde_json::to_vec(&big).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["response"]["allowed"], true);
    // Above the explicit limit: 413, without reading it into an AdmissionReview.
    let huge = vec![b' '; spillway_webhook::server::MAX_REVIEW_BYTES + 1];
    let request = Request::post("/mutate")
        .header("content-type", "application/json")
        .body(Body::from(huge))
        .expect("request builds");
    let response = router(state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn reinvocation_keeps_the_provider_the_first_pass_chose() {
    // With `auto` the usable nodes (so the choice) may change between the two passes; a
    // config reload does the same here: the first pass picked ACI, the second would
    // pick Fargate, and must add nothing (two providers would match no node).
    let state = state("cluster-full.json");
    state.config.store(Arc::new(OperatorConfig {
        default_provider: spillway_common::config::ProviderChoice::Aci,
        ..OperatorConfig::default()
    }));
    let original = review("review-web.json");
    let (pod, _) = admit(&state, &original).await;
    let expressions = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0]["matchExpressions"];
    assert_eq!(expressions[1]["values"], json!(["aci"]));
    state.config.store(Arc::new(OperatorConfig::default()));
    let mut again = original.clone();
    again["request"]["object"] = pod.clone();
    let (pod_again, answer_again) = admit(&state, &again).await;
    assert!(
        answer_again.response.patch.is_none(),
        "second pass must add nothing"
    );
    assert_eq!(pod_again, pod);
}

/// `cluster-full.json` with the virtual nodes changed by `edit` (by node name).
fn full_cluster_with(edit: impl Fn(&str, &mut Value)) -> WebhookState {
    let mut cluster: Value = serde_json::from_slice(&fixture("cluster-full.json")).unwrap();
    for item in cluster["items"].as_array_mut().unwrap() {
        if item["kind"] == "Node" {
            let name = item["metadata"]["name"].as_str().unwrap().to_owned();
            edit(&name, item);
        }
    }
    state_of(&serde_json::to_vec(&cluster).unwrap())
}

fn placement_of(pod: &Value) -> (String, String, Option<String>) {
    let labels = &pod["metadata"]["labels"];
    let provider = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0]["matchExpressions"][1]["values"][0]
        .as_str()
        .map(str::to_owned);
    (
        labels["spillway.io/placement"].as_str().unwrap().to_owned(),
        labels["spillway.io/reason"].as_str().unwrap().to_owned(),
        provider,
    )
}

#[tokio::test]
async fn a_fixed_provider_whose_node_cannot_take_the_pod_keeps_it_local() {
    let web = review("review-web.json");
    let local = ("local".to_owned(), "provider-unavailable".to_owned(), None);
    // Missing.
    let missing = full_cluster_with(|name, node| {
        if name == "spillway-fargate" {
            node["metadata"]["name"] = json!("worker-gone");
            node["metadata"]["labels"] = json!({});
            node["status"]["conditions"][0]["status"] = json!("False");
        }
    });
    assert_eq!(placement_of(&admit(&missing, &web).await.0), local);
    // NotReady.
    let not_ready = full_cluster_with(|name, node| {
        if name == "spillway-fargate" {
            node["status"]["conditions"][0]["status"] = json!("False");
        }
    });
    assert_eq!(placement_of(&admit(&not_ready, &web).await.0), local);
    // Tainted degraded.
    let degraded = full_cluster_with(|name, node| {
        if name == "spillway-fargate" {
            node["spec"]["taints"]
                .as_array_mut()
                .unwrap()
                .push(json!({"key": "spillway.io/provider-degraded", "value": "fargate", "effect": "NoSchedule"}));
        }
    });
    assert_eq!(placement_of(&admit(&degraded, &web).await.0), local);
    // Full: no pod room left.
    let full = full_cluster_with(|name, node| {
        if name == "spillway-fargate" {
            node["status"]["allocatable"]["pods"] = json!("0");
            node["status"]["allocatable"]["cpu"] = json!("0");
        }
    });
    assert_eq!(placement_of(&admit(&full, &web).await.0), local);
}

#[tokio::test]
async fn an_ordered_provider_list_falls_through_to_the_next_usable_node() {
    let degraded = full_cluster_with(|name, node| {
        if name == "spillway-fargate" {
            node["spec"]["taints"]
                .as_array_mut()
                .unwrap()
                .push(json!({"key": "spillway.io/provider-degraded", "value": "fargate", "effect": "NoSchedule"}));
        }
    });
    let mut web = review("review-web.json");
    web["request"]["object"]["metadata"]["annotations"]["spillway.io/provider"] =
        json!("fargate,aci");
    let (pod, answer) = admit(&degraded, &web).await;
    assert_eq!(
        placement_of(&pod),
        (
            "burst".to_owned(),
            "capacity".to_owned(),
            Some("aci".to_owned())
        ),
        "{:?}",
        answer.response.warnings
    );
    let tolerations = pod["spec"]["tolerations"].as_array().unwrap();
    assert_eq!(tolerations.last().unwrap()["value"], "aci");
}

#[tokio::test]
async fn a_pod_whose_own_constraints_rule_out_the_virtual_node_stays_local() {
    let state = state("cluster-full.json");
    let with_spec = |spec: Value| {
        let mut web = review("review-web.json");
        let object = &mut web["request"]["object"]["spec"];
        for (k, v) in spec.as_object().unwrap() {
            object[k] = v.clone();
        }
        web
    };
    let constrained = ("local".to_owned(), "constraints".to_owned(), None);
    let selector = with_spec(json!({"nodeSelector": {"disk": "ssd"}}));
    assert_eq!(placement_of(&admit(&state, &selector).await.0), constrained);
    let affinity = with_spec(
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "type", "operator": "NotIn", "values": ["virtual-kubelet"]}]}
        ]}}}}),
    );
    assert_eq!(placement_of(&admit(&state, &affinity).await.0), constrained);
    let anti_affinity = with_spec(
        json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}
        ]}}}),
    );
    assert_eq!(
        placement_of(&admit(&state, &anti_affinity).await.0),
        constrained
    );
    let spread = with_spec(json!({"topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
         "labelSelector": {"matchLabels": {"app": "web"}}}
    ]}));
    assert_eq!(placement_of(&admit(&state, &spread).await.0), constrained);
    // A selector the virtual node meets does not hold the pod back.
    let linux = with_spec(json!({"nodeSelector": {"spillway.io/provider": "fargate"}}));
    assert_eq!(placement_of(&admit(&state, &linux).await.0).0, "burst");
}
