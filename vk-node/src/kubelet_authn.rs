//! Who is calling the virtual node's kubelet API, as a kubelet decides it: the identity of
//! a verified client certificate, else a bearer token the apiserver vouches for through a
//! TokenReview (how metrics-server calls kubelets with its ServiceAccount token). Answers
//! are cached by the token's hash (valid 2 minutes, invalid 30 seconds, as the kubelet's
//! webhook authenticator does), and the cache is bounded so random tokens cannot fill it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use spillway_common::tls::ClientIdentity;

/// How long a valid token's identity is reused.
pub const VALID_TTL: Duration = Duration::from_secs(120);
/// How long an invalid token's refusal is reused.
pub const INVALID_TTL: Duration = Duration::from_secs(30);
/// Tokens remembered at most; beyond that the cache starts over.
pub const MAX_CACHED_TOKENS: usize = 4096;

type TokenHash = [u8; 32];

/// Checks bearer tokens with TokenReviews.
pub struct Authenticator {
    client: kube::Client,
    cache: Mutex<HashMap<TokenHash, (Option<ClientIdentity>, Instant)>>,
}

impl Authenticator {
    /// Reviews tokens through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The identity `token` belongs to, `None` when the apiserver says it is not valid,
    /// an error when the apiserver could not say.
    pub async fn authenticate(&self, token: &str) -> Result<Option<ClientIdentity>, kube::Error> {
        let hash: TokenHash = Sha256::digest(token.as_bytes()).into();
        if let Some((identity, at)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
        {
            let ttl = if identity.is_some() {
                VALID_TTL
            } else {
                INVALID_TTL
            };
            if at.elapsed() < ttl {
                return Ok(identity.clone());
            }
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                ..TokenReviewSpec::default()
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api.create(&PostParams::default(), &review).await?;
        let identity = answer
            .status
            .filter(|status| status.authenticated == Some(true))
            .and_then(|status| status.user)
            .and_then(|user| {
                Some(ClientIdentity {
                    name: user.username?,
                    groups: user.groups.unwrap_or_default(),
                })
            });
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED_TOKENS {
            cache.clear();
        }
        cache.insert(hash, (identity.clone(), Instant::now()));
        Ok(identity)
    }
}

/// The token of an `Authorization: Bearer …` header value.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_header_and_nothing_else_is() {
        assert_eq!(bearer_token("Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
