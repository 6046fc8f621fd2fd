//! Timestamps in the forms the Kubernetes API writes: RFC 3339 in UTC, to the second
//! (`Time`) or to the microsecond (`MicroTime`); and milliseconds since the epoch, as
//! Prometheus samples and provider APIs carry them.

use std::time::SystemTime;

use k8s_openapi::jiff::Timestamp;

fn timestamp(time: SystemTime) -> Timestamp {
    Timestamp::try_from(time).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// `2026-11-28T10:00:00Z`.
pub fn rfc3339(time: SystemTime) -> String {
    timestamp(time).strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `2026-11-28T10:00:00.123456Z`, as `MicroTime` fields want.
pub fn rfc3339_micros(time: SystemTime) -> String {
    timestamp(time)
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// Milliseconds since the epoch (0 before it, saturating far after it).
pub fn millis(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Milliseconds since the epoch, now.
pub fn now_millis() -> i64 {
    millis(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_micros(t), "2023-11-14T22:13:20.123456Z");
    }
}
