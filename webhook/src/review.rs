//! The `admission.k8s.io/v1` AdmissionReview wire format, written by hand so the patch
//! goes out as the base64 string the API documents (kube-core serializes it as an array
//! of byte values: kube-rs/kube#1781).

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// An incoming review.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    /// `admission.k8s.io/v1` (echoed in the answer).
    pub api_version: Option<String>,
    /// `AdmissionReview`.
    pub kind: Option<String>,
    /// The request; a review without one is malformed.
    pub request: Option<AdmissionRequest>,
}

/// Group, version and kind of the object under review.
#[derive(Debug, Default, Deserialize)]
pub struct GroupVersionKind {
    /// API group, empty for core.
    #[serde(default)]
    pub group: String,
    /// API version.
    #[serde(default)]
    pub version: String,
    /// Kind.
    #[serde(default)]
    pub kind: String,
}

/// The request part of a review.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    /// Identifies this request; echoed in the response.
    pub uid: String,
    /// The object's kind.
    #[serde(default)]
    pub kind: GroupVersionKind,
    /// Subresource, when the request is for one.
    #[serde(default)]
    pub sub_resource: Option<String>,
    /// CREATE, UPDATE, DELETE or CONNECT.
    #[serde(default)]
    pub operation: String,
    /// Namespace of the object.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The object as submitted, kept as its JSON text: it is decoded once, straight into
    /// its type (a pod via an intermediate `Value` cost twice the time).
    #[serde(default)]
    pub object: Option<Box<RawValue>>,
    /// Whether the request is a dry run.
    #[serde(default)]
    pub dry_run: Option<bool>,
}

/// The answer.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    /// The request UID.
    pub uid: String,
    /// Always true: Spillway never blocks a pod.
    pub allowed: bool,
    /// `JSONPatch` when a patch is present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// Base64 of the JSON Patch document.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// Warnings shown to the client that created the pod.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub warnings: Vec<String>,
}

impl AdmissionResponse {
    /// Allows with no patch.
    pub fn allow(uid: &str) -> Self {
        Self {
            uid: uid.to_owned(),
            allowed: true,
            patch_type: None,
            patch: None,
            warnings: Vec::new(),
        }
    }

    /// Adds a warning.
    pub fn warn(mut self, warning: impl Into<String>) -> Self {
        self.warnings.push(warning.into());
        self
    }

    /// Attaches `ops` as the patch, unless there are none.
    pub fn with_patch(mut self, ops: &[Value]) -> Self {
        if ops.is_empty() {
            return self;
        }
        let bytes = serde_json::to_vec(ops).unwrap_or_default();
        self.patch = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
        self.patch_type = Some("JSONPatch".to_owned());
        self
    }

    /// Decodes the patch (for tests and the CLI's readers).
    pub fn decoded_patch(&self) -> Option<Vec<Value>> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(self.patch.as_deref()?)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// The answering review.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReviewResponse {
    /// Same as the request's.
    pub api_version: String,
    /// `AdmissionReview`.
    pub kind: String,
    /// The answer.
    pub response: AdmissionResponse,
}

impl AdmissionReviewResponse {
    /// Wraps `response` for a review of `api_version`.
    pub fn new(api_version: Option<&str>, response: AdmissionResponse) -> Self {
        Self {
            api_version: api_version.unwrap_or("admission.k8s.io/v1").to_owned(),
            kind: "AdmissionReview".to_owned(),
            response,
        }
    }
}

/// Why a request body is not a usable review.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON, or not shaped like a review.
    #[error("request body is not an AdmissionReview: {0}")]
    Parse(#[from] serde_json::Error),
    /// A review with no `request`.
    #[error("AdmissionReview has no request")]
    NoRequest,
}

/// Parses a review body.
pub fn parse(body: &[u8]) -> Result<(Option<String>, AdmissionRequest), ReviewError> {
    let review: AdmissionReview = serde_json::from_slice(body)?;
    let request = review.request.ok_or(ReviewError::NoRequest)?;
    Ok((review.api_version, request))
}
