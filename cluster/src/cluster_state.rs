//! Loads a saved cluster state (`kubectl get nodes,pods,replicasets,deployments,
//! horizontalpodautoscalers -A -o json`, a `v1 List`) into an index, for `spillway admit`.

use serde::Deserialize;
use serde_json::Value;

use crate::index::ClusterIndex;

/// Why a cluster-state file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClusterStateError {
    /// Not JSON.
    #[error("cluster state is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON but not a List of objects.
    #[error("cluster state is not a v1 List: {0}")]
    NotAList(String),
    /// An item could not be read as the kind it claims.
    #[error("cluster state item {index} ({kind} {name}): {message}")]
    Item {
        /// Position in `items`.
        index: usize,
        /// Its kind.
        kind: String,
        /// Its namespace/name.
        name: String,
        /// What was wrong.
        message: String,
    },
}

#[derive(Deserialize)]
struct List {
    kind: Option<String>,
    items: Option<Vec<Value>>,
}

fn typed<T: for<'de> Deserialize<'de>>(item: &Value) -> Result<T, String> {
    T::deserialize(item).map_err(|e| e.to_string())
}

/// Builds an index from the text of a `v1 List`. Items of other kinds are ignored.
pub fn load(text: &[u8]) -> Result<ClusterIndex, ClusterStateError> {
    let list: List = serde_json::from_slice(text)?;
    if list
        .kind
        .as_deref()
        .is_some_and(|k| k != "List" && !k.ends_with("List"))
    {
        return Err(ClusterStateError::NotAList(format!(
            "kind is {:?}",
            list.kind.unwrap_or_default()
        )));
    }
    let items = list
        .items
        .ok_or_else(|| ClusterStateError::NotAList("no items array".into()))?;
    let mut index = ClusterIndex::new();
    for (position, item) in items.iter().enumerate() {
        let kind = item.get("kind").and_then(Value::as_str).unwrap_or("");
        let result = match kind {
            "Node" => typed(item).map(|n| index.apply_node(&n)),
            "Pod" => typed(item).map(|p| index.apply_pod(&p)),
            "ReplicaSet" => typed(item).map(|r| index.apply_replicaset(&r)),
            "Deployment" => typed(item).map(|d| index.apply_deployment(&d)),
            // autoscaling/v1 HPAs keep min/max/desired where v2 does, so one type reads both.
            "HorizontalPodAutoscaler" => typed(item).map(|h| index.apply_hpa(&h)),
            "" => Err("item has no kind".to_owned()),
            _ => Ok(()),
        };
        result.map_err(|message| ClusterStateError::Item {
            index: position,
            kind: kind.to_owned(),
            name: name_of(item),
            message,
        })?;
    }
    Ok(index)
}

fn name_of(item: &Value) -> String {
    let meta = item.get("metadata");
    let field = |f: &str| {
        meta.and_then(|m| m.get(f))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    match field("namespace") {
        "" => field("name").to_owned(),
        ns => format!("{ns}/{}", field("name")),
    }
}
