//! The webhook's seal on its decisions. A decision written on a pod is re-read when the
//! apiserver calls the webhook again for the same pod (reinvocation, after another
//! webhook changed it), so the second pass keeps the first one's placement. A pod
//! template can carry the same annotation and label, though: only a decision sealed by
//! this webhook, moments ago, for this namespace, placement and owning ReplicaSet, is
//! kept; any other is ignored and the pod decided afresh.
//!
//! The value is `<review uid>.<unix ms>.<mac>`, the MAC an HMAC-SHA256 (hex) over the uid, the time, the namespace, the placement and the provider. The key is
//! derived from the webhook's TLS private key, which every replica shares (a review's
//! second pass may reach another replica).

use std::sync::Arc;

use ring::hmac;

/// How old a sealed decision may be when it is re-read: a reinvocation follows its
/// first pass within the same request; the margin covers clock skew between replicas.
pub const SEAL_LIFETIME_MS: i64 = 60_000;

/// Seals and opens decisions.
#[derive(Clone)]
pub struct DecisionSeal {
    key: Arc<hmac::Key>,
}

impl std::fmt::Debug for DecisionSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DecisionSeal(..)")
    }
}

/// What a sealed decision says about the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sealed<'a> {
    /// `namespace` of the pod.
    pub namespace: &'a str,
    /// `burst` or `local`.
    pub placement: &'a str,
    /// The provider of a burst, `""` for local.
    pub provider: &'a str,
    /// The UID of the pod's controller (its ReplicaSet), `""` for none. A template edit
    /// makes a new ReplicaSet, so a seal copied into a template never matches.
    pub owner: &'a str,
}

impl DecisionSeal {
    /// A seal keyed by `secret` (the TLS private key's bytes): replicas sharing it open
    /// each other's decisions.
    pub fn from_secret(secret: &[u8]) -> Self {
        let derived = ring::digest::digest(
            &ring::digest::SHA256,
            &[b"spillway decision seal v1\n".as_slice(), secret].concat(),
        );
        Self {
            key: Arc::new(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())),
        }
    }

    /// A seal with a key of its own, which nothing else opens (offline evaluation,
    /// tests).
    pub fn random() -> Self {
        let rng = ring::rand::SystemRandom::new();
        match hmac::Key::generate(hmac::HMAC_SHA256, &rng) {
            Ok(key) => Self { key: Arc::new(key) },
            // The system's randomness failed: a key from the clock is still one no other
            // process holds.
            Err(_) => Self::from_secret(&now_nanos().to_le_bytes()),
        }
    }

    /// The annotation value for a decision of review `uid` made at `now_ms`.
    pub fn seal(&self, uid: &str, now_ms: i64, about: Sealed<'_>) -> String {
        let tag = hmac::sign(&self.key, message(uid, now_ms, about).as_bytes());
        format!("{uid}.{now_ms}.{}", hex::encode(tag.as_ref()))
    }

    /// Whether `value` is a decision this seal made within [`SEAL_LIFETIME_MS`] of
    /// `now_ms`, about exactly `about`.
    pub fn opens(&self, value: &str, now_ms: i64, about: Sealed<'_>) -> bool {
        let mut parts = value.rsplitn(3, '.');
        let (Some(mac), Some(at), Some(uid)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        let Ok(at_ms) = at.parse::<i64>() else {
            return false;
        };
        if (now_ms - at_ms).abs() > SEAL_LIFETIME_MS {
            return false;
        }
        let Ok(tag) = hex::decode(mac) else {
            return false;
        };
        hmac::verify(&self.key, message(uid, at_ms, about).as_bytes(), &tag).is_ok()
    }
}

/// What the MAC covers.
fn message(uid: &str, at_ms: i64, about: Sealed<'_>) -> String {
    format!(
        "{uid}\n{at_ms}\n{}\n{}\n{}\n{}",
        about.namespace, about.placement, about.provider, about.owner
    )
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// The review uid a decision value names (the in-flight table's key).
pub fn review_uid(value: &str) -> &str {
    value.split('.').next().unwrap_or(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BURST: Sealed<'static> = Sealed {
        namespace: "shop",
        placement: "burst",
        provider: "fargate",
        owner: "rs-1",
    };

    #[test]
    fn a_sealed_decision_opens_for_exactly_what_it_sealed() {
        let seal = DecisionSeal::from_secret(b"key bytes");
        let value = seal.seal("review-1", 1_000_000, BURST);
        assert!(seal.opens(&value, 1_000_500, BURST));
        assert_eq!(review_uid(&value), "review-1");
        // Another replica with the same key opens it too.
        assert!(DecisionSeal::from_secret(b"key bytes").opens(&value, 1_000_500, BURST));
        for other in [
            Sealed {
                namespace: "other",
                ..BURST
            },
            Sealed {
                placement: "local",
                provider: "",
                ..BURST
            },
            Sealed {
                provider: "aci",
                ..BURST
            },
            Sealed {
                owner: "rs-2",
                ..BURST
            },
        ] {
            assert!(!seal.opens(&value, 1_000_500, other), "{other:?}");
        }
    }

    #[test]
    fn copies_forgeries_and_old_seals_do_not_open() {
        let seal = DecisionSeal::from_secret(b"key bytes");
        let value = seal.seal("review-1", 1_000_000, BURST);
        // Too old: a template copied from a pod decided minutes ago.
        assert!(!seal.opens(&value, 1_000_000 + SEAL_LIFETIME_MS + 1, BURST));
        // Another key (another cluster's webhook, or a random one).
        assert!(!DecisionSeal::from_secret(b"other").opens(&value, 1_000_500, BURST));
        assert!(!DecisionSeal::random().opens(&value, 1_000_500, BURST));
        // A bare uid (what the webhook wrote before it sealed), and garbage.
        for forged in [
            "review-1",
            "review-1.1000000.",
            "review-1.1000000.0000000000000000000000000000000000000000000000000000000000000000",
            "x.y.z",
            "",
        ] {
            assert!(!seal.opens(forged, 1_000_500, BURST), "{forged}");
        }
        // The time cannot be moved without the MAC.
        let moved = value.replacen("1000000", "1000400", 1);
        assert!(!seal.opens(&moved, 1_000_500, BURST));
    }
}
