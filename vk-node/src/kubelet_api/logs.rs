//! `GET /containerLogs/{namespace}/{pod}/{container}` with `tailLines`, `sinceSeconds`,
//! `limitBytes`, `timestamps` and `follow` (polling the provider).

use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use spillway_common::tls::ClientIdentity;

use super::{ApiState, error_response};
use crate::provider::{LogLine, LogOptions, Provider};

/// How often `follow=true` polls the provider for new lines.
pub const FOLLOW_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Query parameters of a log request, as the apiserver sends them.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogQuery {
    /// Last N lines.
    pub tail_lines: Option<usize>,
    /// Newer than this many seconds.
    pub since_seconds: Option<i64>,
    /// At most this many bytes.
    pub limit_bytes: Option<usize>,
    /// Prefix RFC 3339 timestamps.
    #[serde(default)]
    pub timestamps: bool,
    /// Keep the stream open and poll for new lines.
    #[serde(default)]
    pub follow: bool,
}

/// Log streams (`follow=true`) served at once; more are answered 429.
pub const MAX_FOLLOWERS: usize = 64;

/// Where a follow stream is: the newest timestamp sent, and how many lines with exactly
/// that timestamp were sent (more may arrive with the same one later).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FollowMark {
    /// Newest timestamp sent (ms).
    pub last_ms: i64,
    /// Lines sent with that timestamp.
    pub at_last: usize,
}

/// The lines of a fresh read not sent yet, and the mark after sending them; lines that
/// share the last timestamp are never dropped (nor sent twice).
pub fn unsent(lines: Vec<LogLine>, mark: FollowMark) -> (Vec<LogLine>, FollowMark) {
    let mut seen_at_last = 0;
    let mut new = Vec::new();
    for line in lines {
        if line.timestamp_ms < mark.last_ms {
            continue;
        }
        if line.timestamp_ms == mark.last_ms && seen_at_last < mark.at_last {
            seen_at_last += 1;
            continue;
        }
        new.push(line);
    }
    let next = match new.last() {
        None => mark,
        Some(last) => {
            let at_last = new
                .iter()
                .filter(|l| l.timestamp_ms == last.timestamp_ms)
                .count();
            FollowMark {
                last_ms: last.timestamp_ms,
                at_last: if last.timestamp_ms == mark.last_ms {
                    mark.at_last + at_last
                } else {
                    at_last
                },
            }
        }
    };
    (new, next)
}

fn format_line(line: &LogLine, timestamps: bool) -> String {
    if timestamps {
        let ts = k8s_openapi::jiff::Timestamp::from_millisecond(line.timestamp_ms)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.9fZ").to_string())
            .unwrap_or_default();
        format!("{ts} {}\n", line.message)
    } else {
        format!("{}\n", line.message)
    }
}

/// Renders lines, cutting at `limit_bytes`.
pub fn render(lines: &[LogLine], timestamps: bool, limit_bytes: Option<usize>) -> String {
    let mut out = String::new();
    for line in lines {
        out.push_str(&format_line(line, timestamps));
    }
    if let Some(limit) = limit_bytes
        && out.len() > limit
    {
        let mut cut = limit;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

pub(super) async fn container_logs<P: Provider>(
    State(state): State<ApiState<P>>,
    who: Option<Extension<ClientIdentity>>,
    headers: HeaderMap,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(query): Query<LogQuery>,
) -> Response {
    if let Some(refused) = state.guard(who, &headers, "proxy").await {
        return refused;
    }
    let uid = state
        .directory
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&format!("{namespace}/{pod}"))
        .and_then(|pod| pod.metadata.uid.clone());
    let Some(uid) = uid else {
        return (
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} is not on this node"),
        )
            .into_response();
    };
    let options = LogOptions {
        tail_lines: query.tail_lines,
        since_seconds: query.since_seconds,
        limit_bytes: query.limit_bytes,
        timestamps: query.timestamps,
    };
    let lines = match state.provider.logs(&uid, &container, &options).await {
        Ok(lines) => lines,
        Err(error) => return error_response(error),
    };
    let first = render(&lines, options.timestamps, options.limit_bytes);
    if !query.follow {
        return (StatusCode::OK, [("content-type", "text/plain")], first).into_response();
    }
    let Ok(permit) = state.followers.clone().try_acquire_owned() else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            format!("more than {MAX_FOLLOWERS} log streams are open on this node; try again later"),
        )
            .into_response();
    };
    let (_, mark) = unsent(lines, FollowMark::default());
    let initial = futures::stream::once(async move { Ok::<_, std::io::Error>(first) });
    let provider = state.provider.clone();
    let follow = futures::stream::unfold(mark, move |mark| {
        let provider = provider.clone();
        let uid = uid.clone();
        let container = container.clone();
        // Held for as long as the stream is open.
        let _permit = &permit;
        async move {
            tokio::time::sleep(FOLLOW_POLL_INTERVAL).await;
            let options = LogOptions {
                timestamps: query.timestamps,
                ..LogOptions::default()
            };
            let lines = provider.logs(&uid, &container, &options).await.ok()?;
            let (new, next) = unsent(lines, mark);
            Some((Ok(render(&new, query.timestamps, None)), next))
        }
    });
    Body::from_stream(futures::StreamExt::chain(initial, follow)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64, message: &str) -> LogLine {
        LogLine {
            timestamp_ms: ms,
            message: message.into(),
        }
    }

    #[test]
    fn following_never_drops_or_repeats_lines_that_share_a_timestamp() {
        let (sent, mark) = unsent(
            vec![at(1, "a"), at(2, "b"), at(2, "c")],
            FollowMark::default(),
        );
        assert_eq!(sent.len(), 3);
        assert_eq!(
            mark,
            FollowMark {
                last_ms: 2,
                at_last: 2
            }
        );
        // A later read: one more line at the same millisecond, then a newer one.
        let read = vec![at(1, "a"), at(2, "b"), at(2, "c"), at(2, "d"), at(3, "e")];
        let (sent, mark) = unsent(read.clone(), mark);
        assert_eq!(sent, vec![at(2, "d"), at(3, "e")]);
        assert_eq!(
            mark,
            FollowMark {
                last_ms: 3,
                at_last: 1
            }
        );
        let (sent, same) = unsent(read, mark);
        assert!(sent.is_empty());
        assert_eq!(same, mark);
    }

    #[test]
    fn render_limits_and_timestamps() {
        let lines = vec![
            LogLine {
                timestamp_ms: 1_700_000_000_000,
                message: "hello".into(),
            },
            LogLine {
                timestamp_ms: 1_700_000_000_500,
                message: "world".into(),
            },
        ];
        assert_eq!(render(&lines, false, None), "hello\nworld\n");
        assert_eq!(render(&lines, false, Some(8)), "hello\nwo");
        assert!(render(&lines, true, None).starts_with("2023-11-14T22:13:20.000000000Z hello\n"));
    }
}
