//! Who may use the virtual node's kubelet API: as a kubelet in webhook authorization mode
//! does, each caller (the identity of its client certificate) is checked with a
//! SubjectAccessReview for `get nodes/<subresource>` on this node, the answer cached
//! (allowed 5 minutes, denied 30 seconds, as the kubelet's defaults).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use spillway_common::tls::ClientIdentity;

/// How long an "allowed" answer is reused.
pub const ALLOWED_TTL: Duration = Duration::from_secs(300);
/// How long a "denied" answer is reused.
pub const DENIED_TTL: Duration = Duration::from_secs(30);

type CacheKey = (String, Vec<String>, &'static str);

/// Asks the apiserver whether a caller may reach a kubelet subresource of this node.
pub struct Authorizer {
    client: kube::Client,
    node: String,
    cache: Mutex<HashMap<CacheKey, (bool, Instant)>>,
}

impl Authorizer {
    /// Checks callers of `node`'s kubelet API with SubjectAccessReviews through `client`.
    pub fn new(client: kube::Client, node: &str) -> Self {
        Self {
            client,
            node: node.to_owned(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `who` may `get nodes/<subresource>` of this node; an error when the
    /// apiserver could not say (the caller is then refused).
    pub async fn allowed(
        &self,
        who: &ClientIdentity,
        subresource: &'static str,
    ) -> Result<bool, kube::Error> {
        let key = (who.name.clone(), who.groups.clone(), subresource);
        if let Some((allowed, at)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            let ttl = if *allowed { ALLOWED_TTL } else { DENIED_TTL };
            if at.elapsed() < ttl {
                return Ok(*allowed);
            }
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(who.name.clone()),
                groups: Some(who.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some("get".into()),
                    resource: Some("nodes".into()),
                    subresource: Some(subresource.into()),
                    name: Some(self.node.clone()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api.create(&PostParams::default(), &review).await?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (allowed, Instant::now()));
        Ok(allowed)
    }
}
