//! `GET /containerLogs/{namespace}/{pod}/{container}` with `tailLines`, `sinceSeconds`,
//! `limitBytes`, `timestamps` and `follow`. A log is streamed page by page as the provider
//! reads it, never gathered whole: a read that names neither `limitBytes` nor `tailLines`
//! stops at [`LOG_READ_CAP_BYTES`] and says so in its last line, reads run a few at a
//! time, and a follower polls from where the provider says new lines begin.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use spillway_common::tls::ClientIdentity;
use tokio::sync::OwnedSemaphorePermit;

use super::{ApiState, error_response};
use crate::provider::{LOG_READ_CAP_BYTES, LogChunk, LogLine, LogOptions, Provider, ProviderError};

/// How often `follow=true` polls the provider for new lines.
pub const FOLLOW_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Reads (the part of a request before it follows) served at once; a further one waits
/// up to [`LOG_READ_QUEUE_WAIT`], then is answered 429.
pub const MAX_LOG_READS: usize = 4;

/// How long a read waits for one of the [`MAX_LOG_READS`] places.
pub const LOG_READ_QUEUE_WAIT: Duration = Duration::from_secs(10);

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
    render_within(lines, timestamps, limit_bytes.unwrap_or(usize::MAX)).0
}

/// Renders lines into at most `room` bytes (cut on a character boundary); whether
/// something was left out.
pub fn render_within(lines: &[LogLine], timestamps: bool, room: usize) -> (String, bool) {
    let mut out = String::new();
    for line in lines {
        out.push_str(&format_line(line, timestamps));
        if out.len() > room {
            let mut cut = room;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            return (out, true);
        }
    }
    (out, false)
}

/// How many bytes a request may send, and whether the bound is the node's own (then the
/// response says where it stopped) or the client's `limitBytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteBudget {
    /// Bytes at most.
    pub cap: usize,
    /// The node's default, not asked for.
    pub ours: bool,
}

impl ByteBudget {
    /// The client's `limitBytes`; else, without `tailLines` either, the node's cap (a
    /// tail is bounded by its lines, and the provider holds it within the cap).
    pub fn of(query: &LogQuery) -> Self {
        match (query.limit_bytes, query.tail_lines) {
            (Some(limit), _) => Self {
                cap: limit,
                ours: false,
            },
            (None, Some(_)) => Self {
                cap: usize::MAX,
                ours: false,
            },
            (None, None) => Self {
                cap: LOG_READ_CAP_BYTES,
                ours: true,
            },
        }
    }
}

/// The last line of a read the node stopped at its cap.
pub fn cap_notice(follow: bool) -> String {
    let then = if follow {
        "following from the newest line"
    } else {
        "ask with --limit-bytes or --tail for another part"
    };
    format!(
        "spillway: the virtual node stopped this read at {LOG_READ_CAP_BYTES} bytes, its \
         cap for a read that names neither --limit-bytes nor --tail; {then}\n"
    )
}

/// The last line of a tail whose older lines the node left out.
pub fn tail_cut_notice() -> String {
    format!(
        "spillway: older lines of this tail were left out to stay within {LOG_READ_CAP_BYTES} \
         bytes\n"
    )
}

/// Where a stream goes after what it holds.
#[derive(Debug)]
enum Next {
    /// The next page of the read.
    Page(String),
    /// Poll for new lines from here; `None`: the provider cannot resume, so re-read and
    /// skip what was sent.
    Follow(Option<String>),
    /// The read stopped short at the cap: find where the log ends now, then follow.
    FollowFromEnd,
    /// Nothing more.
    End,
}

/// One response's stream: pages in, text out, within its budget.
struct LogStream<P> {
    provider: Arc<P>,
    uid: String,
    container: String,
    options: LogOptions,
    follow: bool,
    budget: ByteBudget,
    sent: usize,
    /// For providers without a resume point: the newest lines read.
    mark: FollowMark,
    pending: Option<LogChunk>,
    next: Next,
    /// One of the [`MAX_LOG_READS`] places, held until the read is done.
    read_place: Option<OwnedSemaphorePermit>,
    /// One of the [`MAX_FOLLOWERS`] places, held while the stream is open.
    _follower: Option<OwnedSemaphorePermit>,
}

impl<P: Provider> LogStream<P> {
    /// Renders a chunk within the budget and decides what comes after it.
    fn take(&mut self, chunk: LogChunk) -> String {
        let lines = if self.follow && chunk.resume.is_none() {
            let (new, mark) = unsent(chunk.lines, self.mark);
            self.mark = mark;
            new
        } else {
            chunk.lines
        };
        let room = self.budget.cap.saturating_sub(self.sent);
        let (mut text, full) = render_within(&lines, self.options.timestamps, room);
        self.sent += text.len();
        if full {
            if self.budget.ours {
                // The notice is a line of its own, after the cut one.
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                if self.follow {
                    // The cap bounds the read of what is there; new lines flow on, from
                    // where the log ends once the notice is sent (said after the jump, so
                    // nothing written after it is lost).
                    self.budget.cap = usize::MAX;
                    self.next = Next::FollowFromEnd;
                    return text;
                }
                text.push_str(&cap_notice(false));
            }
            self.next = Next::End;
            return text;
        }
        if chunk.cut && !self.follow {
            text.push_str(&tail_cut_notice());
        }
        self.next = match (chunk.more, self.follow) {
            (Some(more), _) => Next::Page(more),
            (None, true) => Next::Follow(chunk.resume),
            (None, false) => Next::End,
        };
        text
    }

    /// The next piece of the response; `None` ends it.
    async fn next_piece(&mut self) -> Option<String> {
        loop {
            if let Some(chunk) = self.pending.take() {
                let text = self.take(chunk);
                if !text.is_empty() {
                    return Some(text);
                }
                continue;
            }
            match std::mem::replace(&mut self.next, Next::End) {
                Next::End => return None,
                Next::Page(token) => match self.read(Some(&token), &self.options).await {
                    Ok(chunk) => self.pending = Some(chunk),
                    Err(error) => {
                        return Some(format!("spillway: the log read stopped: {error}\n"));
                    }
                },
                Next::FollowFromEnd => {
                    self.read_place = None;
                    let newest = LogOptions {
                        tail_lines: Some(0),
                        ..self.options.clone()
                    };
                    match self.read(None, &newest).await {
                        Ok(chunk) => {
                            self.next = Next::Follow(chunk.resume);
                            return Some(cap_notice(true));
                        }
                        Err(error) => {
                            return Some(format!("spillway: the log read stopped: {error}\n"));
                        }
                    }
                }
                Next::Follow(from) => {
                    self.read_place = None;
                    tokio::time::sleep(FOLLOW_POLL_INTERVAL).await;
                    // A re-read (no resume point) asks for the whole log again, as before.
                    let options = LogOptions {
                        timestamps: self.options.timestamps,
                        ..LogOptions::default()
                    };
                    match self.read(from.as_deref(), &options).await {
                        Ok(chunk) => self.pending = Some(chunk),
                        Err(ProviderError::NotFound(_)) => return None,
                        // Throttled or a passing failure: poll again next time.
                        Err(error) => {
                            tracing::debug!(%error, "log follow poll failed");
                            self.next = Next::Follow(from);
                        }
                    }
                }
            }
        }
    }

    async fn read(
        &self,
        from: Option<&str>,
        options: &LogOptions,
    ) -> Result<LogChunk, ProviderError> {
        self.provider
            .logs(&self.uid, &self.container, options, from)
            .await
    }
}

fn too_many(message: String) -> Response {
    (StatusCode::TOO_MANY_REQUESTS, message).into_response()
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
    let uid = match state.container_pod_uid(&namespace, &pod, &container) {
        Ok(uid) => uid,
        Err(refused) => return refused.into_response(),
    };
    let follower = if query.follow {
        let Ok(place) = state.followers.clone().try_acquire_owned() else {
            return too_many(format!(
                "more than {MAX_FOLLOWERS} log streams are open on this node; try again later"
            ));
        };
        Some(place)
    } else {
        None
    };
    let read_place =
        match tokio::time::timeout(LOG_READ_QUEUE_WAIT, state.log_reads.clone().acquire_owned())
            .await
        {
            Ok(Ok(place)) => place,
            _ => {
                return too_many(format!(
                    "{MAX_LOG_READS} log reads are running on this node and none ended within \
                 {LOG_READ_QUEUE_WAIT:?}; try again later"
                ));
            }
        };
    let options = LogOptions {
        tail_lines: query.tail_lines,
        since_seconds: query.since_seconds,
        limit_bytes: query.limit_bytes,
        timestamps: query.timestamps,
    };
    // The first page is read before answering, so a missing task or a refusal is the
    // response's status rather than a line in a 200.
    let first = match state.provider.logs(&uid, &container, &options, None).await {
        Ok(chunk) => chunk,
        Err(error) => return error_response(error),
    };
    let stream = LogStream {
        provider: state.provider.clone(),
        uid,
        container,
        options,
        follow: query.follow,
        budget: ByteBudget::of(&query),
        sent: 0,
        mark: FollowMark::default(),
        pending: Some(first),
        next: Next::End,
        read_place: Some(read_place),
        _follower: follower,
    };
    let body = futures::stream::unfold(stream, |mut stream| async move {
        let piece = stream.next_piece().await?;
        Some((Ok::<_, std::io::Error>(piece), stream))
    });
    (
        StatusCode::OK,
        [("content-type", "text/plain")],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    use crate::provider::RemoteStatus;

    /// A provider whose log is `lines`, served in pages of two with index tokens, as
    /// CloudWatch does (a forward token at the end comes back unchanged).
    #[derive(Default)]
    struct Paged {
        lines: Mutex<Vec<LogLine>>,
        reads: Mutex<Vec<Option<String>>>,
    }

    impl Provider for Paged {
        fn name(&self) -> &'static str {
            "paged"
        }
        async fn create(
            &self,
            _: &k8s_openapi::api::core::v1::Pod,
            _: &crate::pod_objects::PodObjects,
        ) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn delete(&self, _: &str, _: i64) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn list(&self) -> Result<HashMap<String, RemoteStatus>, ProviderError> {
            Ok(HashMap::new())
        }
        async fn statuses(
            &self,
            _: &[String],
        ) -> Result<HashMap<String, RemoteStatus>, ProviderError> {
            Ok(HashMap::new())
        }
        async fn logs(
            &self,
            _: &str,
            _: &str,
            options: &LogOptions,
            from: Option<&str>,
        ) -> Result<LogChunk, ProviderError> {
            self.reads.lock().unwrap().push(from.map(str::to_owned));
            let all = self.lines.lock().unwrap().clone();
            let (start, end) = match (from, options.tail_lines) {
                (Some(at), _) => {
                    let at: usize = at.parse().unwrap();
                    (at, (at + 2).min(all.len()))
                }
                (None, Some(tail)) => (all.len().saturating_sub(tail), all.len()),
                (None, None) => (0, 2.min(all.len())),
            };
            Ok(LogChunk {
                lines: all[start..end].to_vec(),
                more: (end > start && options.tail_lines.is_none()).then(|| end.to_string()),
                resume: Some(end.to_string()),
                cut: false,
            })
        }
    }

    fn stream(provider: Arc<Paged>, follow: bool, budget: ByteBudget) -> LogStream<Paged> {
        LogStream {
            provider,
            uid: "u".into(),
            container: "app".into(),
            options: LogOptions::default(),
            follow,
            budget,
            sent: 0,
            mark: FollowMark::default(),
            pending: None,
            next: Next::Page("0".into()),
            read_place: None,
            _follower: None,
        }
    }

    fn numbered(from: usize, to: usize) -> Vec<LogLine> {
        (from..to).map(|i| at(i as i64, &format!("l{i}"))).collect()
    }

    #[tokio::test]
    async fn a_read_is_sent_page_by_page_and_stops_at_the_cap_saying_so() {
        let provider = Arc::new(Paged::default());
        *provider.lines.lock().unwrap() = numbered(0, 10);
        // Each line is 3 bytes: the cap of 10 ends amid the fourth.
        let mut read = stream(
            provider.clone(),
            false,
            ByteBudget {
                cap: 10,
                ours: true,
            },
        );
        let mut pieces = Vec::new();
        while let Some(piece) = read.next_piece().await {
            pieces.push(piece);
        }
        assert_eq!(pieces[0], "l0\nl1\n", "the first page alone");
        let text = pieces.concat();
        assert!(text.starts_with("l0\nl1\nl2\nl\nspillway: "), "{text}");
        assert!(text.ends_with("for another part\n"), "{text}");
        assert_eq!(
            provider.reads.lock().unwrap().len(),
            2,
            "no page read beyond the cap"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_follow_past_the_cap_jumps_to_the_end_and_sends_only_new_lines() {
        let provider = Arc::new(Paged::default());
        *provider.lines.lock().unwrap() = numbered(0, 10);
        let mut follow = stream(
            provider.clone(),
            true,
            ByteBudget {
                cap: 10,
                ours: true,
            },
        );
        let mut text = String::new();
        while !text.contains("following from the newest line") {
            text.push_str(&follow.next_piece().await.unwrap());
        }
        provider.lines.lock().unwrap().extend(numbered(10, 12));
        let new = follow.next_piece().await.unwrap();
        assert_eq!(new, "l10\nl11\n");
    }

    #[tokio::test]
    async fn the_clients_limit_ends_even_a_follow_without_a_notice() {
        let provider = Arc::new(Paged::default());
        *provider.lines.lock().unwrap() = numbered(0, 10);
        let mut follow = stream(
            provider,
            true,
            ByteBudget {
                cap: 7,
                ours: false,
            },
        );
        let mut text = String::new();
        while let Some(piece) = follow.next_piece().await {
            text.push_str(&piece);
        }
        assert_eq!(text, "l0\nl1\nl");
    }

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
