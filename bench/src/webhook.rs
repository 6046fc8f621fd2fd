//! Webhook benchmarks: the decision in-process, and the HTTPS server under load from wrk
//! and a fixed-rate generator, each against the bare axum+rustls baseline in the same run.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use base64::Engine;
use clap::{Args, ValueEnum};
use spillway_cluster::decision::{self, PlacementCounts, PodFacts};
use spillway_cluster::policy;
use spillway_common::config::OperatorConfig;
use spillway_common::tls::{TlsFiles, TlsServer};
use spillway_webhook::admission;
use spillway_webhook::inflight::{DEFAULT_TTL, InFlight};
use spillway_webhook::metrics::WebhookMetrics;
use spillway_webhook::server::{WebhookState, router};
use spillway_webhook::{review, synthetic};
use tokio_util::sync::CancellationToken;

use crate::report;
use crate::stats::{Samples, ms, rss_kib, us};

const NODES: usize = 5_000;
const PODS: usize = 150_000;
const DEPLOYMENTS: usize = 500;

fn time_each(iterations: usize, mut f: impl FnMut()) -> Samples {
    for _ in 0..iterations / 10 {
        f(); // warm up
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        f();
        samples.push(started.elapsed());
    }
    Samples::new(samples)
}

/// Per-call latency of the decision against the synthetic index.
pub fn decision() -> anyhow::Result<()> {
    let built = Instant::now();
    let index = synthetic::cluster(NODES, PODS, DEPLOYMENTS);
    let build_time = built.elapsed();
    let review_bytes = synthetic::review("bench", 7);
    let (_, request) = review::parse(&review_bytes)?;
    let config = OperatorConfig::default();
    let seal = spillway_webhook::decision_seal::DecisionSeal::random();
    let view = index
        .workload("bench", "web-7")
        .expect("synthetic workload");
    let (policy, _) = policy::read(Some(view.annotations), None);
    let no_constraints = spillway_cluster::constraints::NodeConstraints::default();
    let facts = PodFacts {
        needs: spillway_common::pod_resources::PodResources {
            cpu_millis: 100,
            memory_bytes: 128 << 20,
            cpu_specified: true,
            memory_specified: true,
        },
        tolerations: &[],
        constraints: &no_constraints,
        provider: decision::ProviderPick {
            provider: spillway_common::config::Provider::Fargate,
            unusable: None,
        },
        ineligible: &[],
        counts: view.counts,
        replicas: view.replicas,
        hpa: view.hpa,
        budget: Default::default(),
    };
    let pure = time_each(200_000, || {
        std::hint::black_box(decision::decide(
            std::hint::black_box(&facts),
            &policy,
            &config,
            &index,
        ));
    });
    // Worst case: 15 CPU fits no node (each has about 11 free), so every node is scanned.
    let large = PodFacts {
        needs: spillway_common::pod_resources::PodResources {
            cpu_millis: 15_000,
            memory_bytes: 1 << 30,
            cpu_specified: true,
            memory_specified: true,
        },
        ..facts.clone()
    };
    assert_eq!(
        decision::decide(&large, &policy, &config, &index).reason,
        decision::Reason::NoFit
    );
    let scan = time_each(20_000, || {
        std::hint::black_box(decision::decide(
            std::hint::black_box(&large),
            &policy,
            &config,
            &index,
        ));
    });
    let evaluate = time_each(100_000, || {
        std::hint::black_box(admission::evaluate(
            &request,
            &index,
            |_| PlacementCounts::default(),
            &config,
            &seal,
        ));
    });
    let full = time_each(50_000, || {
        let (_, request) = review::parse(std::hint::black_box(&review_bytes)).expect("parses");
        std::hint::black_box(admission::evaluate(
            &request,
            &index,
            |_| PlacementCounts::default(),
            &config,
            &seal,
        ));
    });
    let row = |name: &str, s: &Samples| {
        format!(
            "| {name} | {} | {} | {} | {} |",
            s.len(),
            us(s.percentile(50.0)),
            us(s.percentile(99.0)),
            us(s.mean())
        )
    };
    let body = format!(
        "## Webhook decision (`make bench`, spillway-bench decision)\n\n\
         Machine: {}. Index: {NODES} nodes, {PODS} pods, {DEPLOYMENTS} opted-in Deployments (built in {:.1} s). \
         Release build, one thread, per-call wall time. Target: decision p99 ≤ 20 µs.\n\n\
         | what | calls | p50 | p99 | mean |\n|---|---|---|---|---|\n{}\n{}\n{}\n{}\n",
        report::machine(),
        build_time.as_secs_f64(),
        row("`decide()`: the rules over the index", &pure),
        row(
            "`decide()`, worst case: no node fits, all 5,000 scanned",
            &scan
        ),
        row(
            "`evaluate()`: pod decode + policy + decide + patch",
            &evaluate
        ),
        row("parse the 2 kB AdmissionReview + `evaluate()`", &full),
    );
    report::write_section("decision", &body)
}

/// Which server `serve` runs.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Mode {
    /// The real admission router over a synthetic index.
    Webhook,
    /// Parse the review with kube's types, answer a fixed one-op patch.
    Bare,
    /// Parse the review with kube's types, allow with no patch: the least any webhook costs.
    Allow,
    /// Parse the review with kube's types, answer a fixed patch shaped like Spillway's
    /// local decision (two labels and an annotation holding the request UID).
    Shaped,
}

/// Flags of `serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[arg(long, value_enum)]
    mode: Mode,
    #[arg(long, default_value_t = 0)]
    pods: usize,
    #[arg(long, default_value_t = 0)]
    nodes: usize,
}

/// What a trivial webhook answers.
#[derive(Clone, Copy)]
enum TrivialPatch {
    None,
    OneLabel,
    SpillwayShaped,
}

fn bare_router(patch: TrivialPatch) -> Router {
    Router::new().route(
        "/mutate",
        post(move |body: Bytes| async move {
            let review: kube::core::admission::AdmissionReview<kube::core::DynamicObject> = match serde_json::from_slice(&body) {
                Ok(review) => review,
                Err(error) => return (axum::http::StatusCode::BAD_REQUEST, error.to_string()).into_response_parts(),
            };
            let uid = review.request.map(|r| r.uid).unwrap_or_default();
            let ops = match patch {
                TrivialPatch::None => None,
                TrivialPatch::OneLabel => Some(serde_json::json!([{"op": "add", "path": "/metadata/labels/bench", "value": "1"}])),
                TrivialPatch::SpillwayShaped => Some(serde_json::json!([
                    {"op": "add", "path": "/metadata/labels/spillway.io~1placement", "value": "local"},
                    {"op": "add", "path": "/metadata/labels/spillway.io~1reason", "value": "no-pressure"},
                    {"op": "add", "path": "/metadata/annotations/spillway.io~1decision", "value": uid},
                ])),
            };
            let mut answer = serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": uid, "allowed": true}});
            if let Some(ops) = ops {
                answer["response"]["patchType"] = "JSONPatch".into();
                answer["response"]["patch"] = base64::engine::general_purpose::STANDARD.encode(ops.to_string()).into();
            }
            (axum::http::StatusCode::OK, serde_json::to_string(&answer).unwrap_or_default()).into_response_parts()
        }),
    )
}

trait IntoParts {
    fn into_response_parts(self) -> axum::response::Response;
}

impl IntoParts for (axum::http::StatusCode, String) {
    fn into_response_parts(self) -> axum::response::Response {
        use axum::response::IntoResponse;
        (self.0, [("content-type", "application/json")], self.1).into_response()
    }
}

/// Serves one mode until killed; prints `READY <port> <rss KiB>` once listening.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let pki = spillway_common::pki::issue(&["127.0.0.1"]);
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("tls.crt"), &pki.cert_pem)?;
    std::fs::write(dir.path().join("tls.key"), &pki.key_pem)?;
    std::fs::write(dir.path().join("ca.crt"), &pki.ca_pem)?;
    let app = match args.mode {
        Mode::Bare => bare_router(TrivialPatch::OneLabel),
        Mode::Allow => bare_router(TrivialPatch::None),
        Mode::Shaped => bare_router(TrivialPatch::SpillwayShaped),
        Mode::Webhook => {
            let index =
                synthetic::cluster(args.nodes, args.pods, DEPLOYMENTS.min(args.pods.max(1)));
            router(WebhookState {
                index: Arc::new(RwLock::new(index)),
                in_flight: Arc::new(Mutex::new(InFlight::new(DEFAULT_TTL))),
                config: Arc::new(ArcSwap::from_pointee(OperatorConfig::default())),
                metrics: WebhookMetrics::register(&prometheus::Registry::new())?,
                seal: spillway_webhook::decision_seal::DecisionSeal::random(),
            })
        }
    };
    let files = TlsFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
        client_ca: None,
    };
    let server = TlsServer::bind("127.0.0.1:0".parse()?, files).await?;
    let port = server.local_addr()?.port();
    println!(
        "READY {port} {} {}",
        rss_kib(std::process::id()).unwrap_or(0),
        dir.path().join("ca.crt").display()
    );
    server
        .serve(app, Duration::from_secs(3600), CancellationToken::new())
        .await;
    Ok(())
}

/// A benchmark server child process.
pub struct Server {
    child: Child,
    /// Its port.
    pub port: u16,
    rss_kib: u64,
    /// Path of the CA that signed its certificate.
    pub ca: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `serve` in a child process.
pub fn start(mode: &str, nodes: usize, pods: usize) -> anyhow::Result<Server> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "serve",
            "--mode",
            mode,
            "--nodes",
            &nodes.to_string(),
            "--pods",
            &pods.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let parts: Vec<&str> = line.split_whitespace().collect();
    anyhow::ensure!(
        parts.first() == Some(&"READY"),
        "server did not start: {line}"
    );
    Ok(Server {
        child,
        port: parts[1].parse()?,
        rss_kib: parts[2].parse()?,
        ca: parts[3].to_owned(),
    })
}

/// Saturation throughput with wrk (1 thread, 32 connections, 10 s).
fn wrk(port: u16, script: &std::path::Path) -> anyhow::Result<(f64, String)> {
    let output = Command::new("wrk")
        .args(["-t1", "-c32", "-d10s", "--latency", "-s"])
        .arg(script)
        .arg(format!("https://127.0.0.1:{port}/mutate"))
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("wrk printed no rate: {text}"))?;
    let p99 = text
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
        .unwrap_or_default();
    anyhow::ensure!(!text.contains("Non-2xx"), "wrk saw errors: {text}");
    Ok((rps, p99))
}

/// Open-loop load at `rate` req/s for `duration`; latencies of completed requests.
async fn fixed_rate(
    port: u16,
    ca: &str,
    body: Vec<u8>,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<(Samples, usize)> {
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca)?)?)
        .pool_max_idle_per_host(256)
        .build()?;
    let url = format!("https://127.0.0.1:{port}/mutate");
    let samples = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let body = Bytes::from(body);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = (f64::from(rate) * duration.as_secs_f64()) as usize;
    let mut tasks = Vec::with_capacity(total);
    for _ in 0..total {
        ticker.tick().await;
        let (client, url, body, samples, errors) = (
            client.clone(),
            url.clone(),
            body.clone(),
            samples.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let ok = match client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
            {
                Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
                Err(_) => false,
            };
            if ok {
                samples
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(started.elapsed());
            } else {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    futures::future::join_all(tasks).await;
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
    Ok((
        Samples::new(samples),
        errors.load(std::sync::atomic::Ordering::Relaxed),
    ))
}

/// The load benchmark.
pub async fn load() -> anyhow::Result<()> {
    let review = synthetic::review("load", 7);
    let dir = tempfile::tempdir()?;
    let body_path = dir.path().join("review.json");
    std::fs::write(&body_path, &review)?;
    let script = dir.path().join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nlocal f = io.open(\"{}\", \"rb\")\nwrk.body = f:read(\"*a\")\nf:close()\n",
            body_path.display()
        ),
    )?;

    let empty = start("webhook", 0, 0)?;
    let full = start("webhook", NODES, PODS)?;
    let bare = start("bare", 0, 0)?;
    let per_pod = (full.rss_kib.saturating_sub(empty.rss_kib) * 1024) as f64 / PODS as f64;
    let empty_rss = empty.rss_kib;
    drop(empty);

    let (bare_rps, bare_p99) = wrk(bare.port, &script)?;
    let (hook_rps, hook_p99) = wrk(full.port, &script)?;
    let (bare_rate, bare_errors) = fixed_rate(
        bare.port,
        &bare.ca,
        review.clone(),
        2000,
        Duration::from_secs(10),
    )
    .await?;
    let (hook_rate, hook_errors) = fixed_rate(
        full.port,
        &full.ca,
        review.clone(),
        2000,
        Duration::from_secs(10),
    )
    .await?;
    let body = format!(
        "## Webhook over HTTPS (`make bench`, spillway-bench webhook-load)\n\n\
         Machine: {}. Review: {} bytes (CREATE of a pod of an opted-in Deployment). The webhook is the real `/mutate` \
         router and TLS server over an index of {NODES} nodes and {PODS} pods; the baseline is a bare axum+rustls server \
         that parses the review with kube's types and returns a fixed one-op patch. Both run as separate processes and \
         are measured in this run with the same load generators.\n\n\
         | measure | webhook | bare baseline | ratio / target |\n|---|---|---|---|\n\
         | saturation, wrk -t1 -c32 10 s (req/s) | {hook_rps:.0} | {bare_rps:.0} | {:.2} (target ≥ 0.5) |\n\
         | wrk p99 at saturation | {hook_p99} | {bare_p99} | |\n\
         | fixed 2,000 req/s for 10 s: p50 | {} | {} | |\n\
         | fixed 2,000 req/s for 10 s: p99 | {} | {} | target ≤ 1 ms |\n\
         | fixed 2,000 req/s: failed requests | {hook_errors} | {bare_errors} | |\n\
         | RSS, empty index → 150k pods | {} KiB → {} KiB | | {per_pod:.0} bytes per pod (target ≤ 200) |\n",
        report::machine(),
        review.len(),
        hook_rps / bare_rps,
        ms(hook_rate.percentile(50.0)),
        ms(bare_rate.percentile(50.0)),
        ms(hook_rate.percentile(99.0)),
        ms(bare_rate.percentile(99.0)),
        empty_rss,
        full.rss_kib,
    );
    report::write_section("webhook-load", &body)
}
