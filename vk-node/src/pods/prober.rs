//! Runs one probe against a pod's IP, as a kubelet does: an HTTP GET that answers 200 to
//! 399, or a TCP connection, within the probe's timeout. The node runs inside the
//! cluster's network, as a kubelet does, so the pod's IP is reachable from it.

use std::net::IpAddr;

use super::probes::{ProbeAction, ProbeRun, ProbeSpec};

/// The HTTP client probes share: no proxy, and no certificate checks for `HTTPS` probes
/// (the kubelet does not check them either).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

fn failed(message: String) -> ProbeRun {
    ProbeRun { ok: false, message }
}

/// Runs `spec` against `ip`.
pub async fn run(ip: IpAddr, spec: &ProbeSpec, http: &reqwest::Client) -> ProbeRun {
    match &spec.action {
        ProbeAction::Tcp { port } => {
            let address = std::net::SocketAddr::new(ip, *port);
            match tokio::time::timeout(spec.timeout, tokio::net::TcpStream::connect(address)).await
            {
                Ok(Ok(_)) => ProbeRun {
                    ok: true,
                    message: String::new(),
                },
                Ok(Err(error)) => failed(format!("dial tcp {address}: {error}")),
                Err(_) => failed(format!("dial tcp {address}: i/o timeout")),
            }
        }
        ProbeAction::Http {
            port,
            path,
            https,
            headers,
        } => {
            let scheme = if *https { "https" } else { "http" };
            let host = match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
            let path = if path.starts_with('/') {
                path.clone()
            } else {
                format!("/{path}")
            };
            let url = format!("{scheme}://{host}:{port}{path}");
            let mut request = http
                .get(&url)
                .timeout(spec.timeout)
                .header("User-Agent", "kube-probe/spillway");
            for (name, value) in headers {
                request = request.header(name.as_str(), value.as_str());
            }
            match request.send().await {
                Ok(response) if (200..400).contains(&response.status().as_u16()) => ProbeRun {
                    ok: true,
                    message: String::new(),
                },
                Ok(response) => failed(format!(
                    "HTTP probe failed with statuscode: {}",
                    response.status().as_u16()
                )),
                Err(error) if error.is_timeout() => failed(format!(
                    "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                )),
                Err(error) => failed(format!("Get {url:?}: {error}")),
            }
        }
        ProbeAction::Exec(_) => failed("exec probes are run by the provider, not the node".into()),
        ProbeAction::Unsupported(why) => failed(why.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pods::probes::ProbeKind;

    fn spec(action: ProbeAction) -> ProbeSpec {
        ProbeSpec {
            kind: ProbeKind::Readiness,
            container: "app".into(),
            action,
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            success_threshold: 1,
            failure_threshold: 3,
        }
    }

    /// An HTTP server on loopback answering every request with `status`.
    async fn answering(status: u16) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .fallback(move || async move { axum::http::StatusCode::from_u16(status).unwrap() });
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    #[tokio::test]
    async fn http_probes_pass_on_2xx_and_3xx_and_fail_otherwise() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let http = http_client();
        for (status, ok) in [(200, true), (302, true), (404, false), (500, false)] {
            let port = answering(status).await;
            let run = run(
                loopback,
                &spec(ProbeAction::Http {
                    port,
                    path: "/healthz".into(),
                    https: false,
                    headers: vec![],
                }),
                &http,
            )
            .await;
            assert_eq!(run.ok, ok, "{status}: {}", run.message);
            if !ok {
                assert_eq!(
                    run.message,
                    format!("HTTP probe failed with statuscode: {status}")
                );
            }
        }
    }

    #[tokio::test]
    async fn tcp_probes_pass_when_something_listens() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let http = http_client();
        assert!(
            run(loopback, &spec(ProbeAction::Tcp { port }), &http)
                .await
                .ok
        );
        drop(listener);
        let closed = run(loopback, &spec(ProbeAction::Tcp { port }), &http).await;
        assert!(!closed.ok);
        assert!(
            closed.message.starts_with("dial tcp 127.0.0.1:"),
            "{}",
            closed.message
        );
    }
}
