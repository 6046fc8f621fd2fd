//! `spillway run`: the webhook, the controller and the embedded virtual node(s) in one
//! process, sharing one config, one metrics registry and one admin server. With
//! `--webhook-url` (and no `--tls-cert`) it makes its own CA and serving certificate and
//! registers a MutatingWebhookConfiguration pointing at that URL with `failurePolicy:
//! Ignore`, removed again on a clean shutdown: one command to try Spillway on a cluster.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::run_registration as registration;
use anyhow::{Context, bail};
use base64::Engine;
use clap::Args;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, DeleteParams};
use prometheus::Registry;
use serde_json::json;
use spillway_common::admin::{self, Readiness};
use spillway_common::tls::TlsFiles;
use spillway_controller::run::{ControllerArgs, load_config, run_loops};
use spillway_vk_node::run::EmbeddedNodesArgs;
use spillway_webhook::run::ServeOptions;
use tokio_util::sync::CancellationToken;

/// On shutdown, how long `spillway run` keeps answering reviews after readiness went false:
/// short, since it removes its own webhook registration as it stops.
const SHUTDOWN_DELAY: Duration = Duration::from_secs(1);

/// Flags of `spillway run`.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// URL the apiserver calls for admissions (`https://HOST:PORT/mutate`, reaching
    /// --listen). Without --tls-cert, Spillway makes its own CA and a serving certificate
    /// for HOST and registers (create-or-update) the MutatingWebhookConfiguration named by
    /// --webhook-name with that URL and `failurePolicy: Ignore`; a clean shutdown removes it.
    #[arg(long, env = "SPILLWAY_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Name of the MutatingWebhookConfiguration that --webhook-url registers.
    #[arg(long, default_value = "spillway", env = "SPILLWAY_WEBHOOK_NAME")]
    pub webhook_name: String,
    /// HTTPS address of the admission server (default: all interfaces, on the port of
    /// --webhook-url, else 8443).
    #[arg(long, env = "SPILLWAY_WEBHOOK_ADDR")]
    pub listen: Option<SocketAddr>,
    /// PEM serving certificate to use instead of a self-made one (you then register the
    /// webhook yourself); reloaded when it changes.
    #[arg(long, env = "SPILLWAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM key of --tls-cert.
    #[arg(long, env = "SPILLWAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)] // the controller's flags, documented there
    pub controller: ControllerArgs,
}

/// Where the admission server listens: `--listen`, else all interfaces on the port of
/// the webhook URL (443 when it names none), else 8443.
pub fn listen_address(listen: Option<SocketAddr>, url: Option<&str>) -> SocketAddr {
    listen.unwrap_or_else(|| {
        let port = url
            .and_then(|u| u.parse::<http::Uri>().ok())
            .map(|u| u.port_u16().unwrap_or(443))
            .unwrap_or(8443);
        SocketAddr::from(([0, 0, 0, 0], port))
    })
}

/// The host of an `https://` URL, refusing anything else.
pub fn webhook_host(url: &str) -> anyhow::Result<String> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("--webhook-url {url:?} is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        bail!(
            "--webhook-url {url:?} must start with https:// (the apiserver only calls webhooks over TLS)"
        );
    }
    let host = uri
        .host()
        .with_context(|| format!("--webhook-url {url:?} has no host"))?;
    Ok(host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned())
}

/// The configuration `spillway run` registers: every Pod CREATE outside the system
/// namespaces, never blocking (`failurePolicy: Ignore`).
pub fn webhook_configuration(name: &str, url: &str, ca_pem: &str) -> serde_json::Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name,
            "labels": {registration::MANAGED_BY_KEY: registration::MANAGED_BY},
            "annotations": {registration::OWNER_ANNOTATION: registration::this_owner()}},
        "webhooks": [{
            "name": "burst.spillway.io",
            "clientConfig": {
                "url": url,
                "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
            },
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name",
                "operator": "NotIn", "values": ["kube-system", "kube-node-lease", "kube-public"]}]},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "failurePolicy": "Ignore",
            "reinvocationPolicy": "IfNeeded",
            "timeoutSeconds": 2
        }]
    })
}

/// A temporary directory only this user may enter (0700), removed when dropped.
fn private_dir() -> std::io::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// Writes a private key readable by this user only (0600 from the start, never wider).
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

/// PEM of DER certificates.
fn pem(certificates: &[Vec<u8>]) -> String {
    let mut out = String::new();
    for der in certificates {
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in body.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// Fills in what a virtual node's kubelet API needs when `spillway run` was not given it:
/// a serving certificate for `--node-address` from a self-made CA, and, to authenticate
/// the apiserver's kubelet client certificate, the kubeconfig's cluster CA (kubeadm and
/// the test bed sign that certificate with it).
async fn default_kubelet_tls(nodes: &mut EmbeddedNodesArgs, dir: &Path) -> anyhow::Result<()> {
    if nodes.vk_provider.is_empty() {
        tracing::warn!(
            "no --vk-provider: no virtual node runs here, so burst pods stay Pending until one does"
        );
        return Ok(());
    }
    let options = &mut nodes.node;
    if options.kubelet_tls_cert.is_none() && options.kubelet_tls_key.is_none() {
        let pki = spillway_common::pki::try_issue(&[options.node_address.as_str()]).with_context(
            || {
                format!(
                    "making a kubelet certificate for {:?}",
                    options.node_address
                )
            },
        )?;
        let (cert, key) = (dir.join("kubelet.crt"), dir.join("kubelet.key"));
        std::fs::write(&cert, &pki.cert_pem)?;
        write_private(&key, &pki.key_pem)?;
        options.kubelet_tls_cert = Some(cert);
        options.kubelet_tls_key = Some(key);
        tracing::info!(address = %options.node_address, "kubelet API serves a self-made certificate");
    }
    if options.kubelet_client_ca.is_none() {
        let config = spillway_common::kube_access::config().await?;
        let roots = config
            .root_cert
            .filter(|r| !r.is_empty())
            .context("the kubeconfig names no cluster CA: give --kubelet-client-ca")?;
        let path = dir.join("kubelet-client-ca.crt");
        std::fs::write(&path, pem(&roots))?;
        options.kubelet_client_ca = Some(path);
        tracing::warn!(
            "no --kubelet-client-ca: the kubelet API trusts client certificates of the kubeconfig's cluster CA"
        );
    }
    Ok(())
}

/// Runs everything until `shutdown`.
pub async fn run(mut args: RunArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dir = private_dir().context("creating a directory for the self-made certificate")?;
    default_kubelet_tls(&mut args.controller.nodes, dir.path()).await?;
    let (tls, registration) = match (&args.tls_cert, &args.tls_key, &args.webhook_url) {
        (Some(cert), Some(key), _) => (
            TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: None,
            },
            None,
        ),
        (None, None, Some(url)) => {
            let host = webhook_host(url)?;
            let pki = spillway_common::pki::try_issue(&[host.as_str()])
                .with_context(|| format!("making a serving certificate for {host:?}"))?;
            let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
            std::fs::write(&cert, &pki.cert_pem)?;
            write_private(&key, &pki.key_pem)?;
            (
                TlsFiles {
                    cert,
                    key,
                    client_ca: None,
                },
                Some(webhook_configuration(&args.webhook_name, url, &pki.ca_pem)),
            )
        }
        _ => bail!(
            "give --webhook-url (Spillway makes its certificate and registers its webhook) or --tls-cert and --tls-key (you register the webhook)"
        ),
    };
    let client = spillway_common::kube_access::client().await?;
    let registry = Registry::new();
    let readiness = Readiness::default();
    let admin = tokio::spawn(admin::serve(
        args.controller.admin.admin_addr,
        registry.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));
    let lease_namespace = args.controller.nodes.node.leader_election_namespace.clone();
    let config = load_config(
        &args.controller.loops,
        &client,
        &lease_namespace,
        &registry,
        &shutdown,
    )?;
    // A mock node stands in for the provider burst pods ask for, or none would match it.
    if args.controller.nodes.node.advertise_provider.is_none()
        && args.controller.nodes.vk_provider == [spillway_vk_node::run::ProviderKind::Mock]
    {
        let provider = config.load().default_provider;
        tracing::info!(%provider, "the mock virtual node advertises the default provider");
        args.controller.nodes.node.advertise_provider = Some(provider.to_string());
    }
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(configuration) = &registration {
        registration::remove_leftovers(&webhooks, &args.webhook_name).await;
        registration::register(&webhooks, &args.webhook_name, configuration).await?;
        tracing::info!(name = %args.webhook_name, url = ?args.webhook_url, "webhook registered");
    }
    let options = ServeOptions {
        listen: listen_address(args.listen, args.webhook_url.as_deref()),
        tls,
        reload_interval: Duration::from_secs(args.controller.loops.reload_interval_seconds.max(1)),
        limits: spillway_common::conn_limits::ConnLimits::default(),
        shutdown_delay: SHUTDOWN_DELAY,
    };
    let webhook = spillway_webhook::run::serve(
        options,
        config.clone(),
        &registry,
        readiness.clone(),
        shutdown.clone(),
    );
    let controller = run_loops(
        client,
        args.controller.loops,
        args.controller.nodes,
        config,
        &registry,
        readiness,
        shutdown.clone(),
    );
    // One half failing stops the other.
    let (webhook, controller) = tokio::join!(
        async {
            let result = webhook.await;
            if result.is_err() {
                shutdown.cancel();
            }
            result
        },
        async {
            let result = controller.await;
            if result.is_err() {
                shutdown.cancel();
            }
            result
        }
    );
    if registration.is_some() {
        match webhooks
            .delete(&args.webhook_name, &DeleteParams::default())
            .await
        {
            Ok(_) => tracing::info!(name = %args.webhook_name, "webhook registration removed"),
            Err(error) => {
                tracing::warn!(%error, name = %args.webhook_name, "could not remove the webhook registration")
            }
        }
    }
    let _ = admin.await;
    webhook?;
    controller?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_url_must_be_https_with_a_host() {
        assert_eq!(
            webhook_host("https://127.0.0.1:8443/mutate").unwrap(),
            "127.0.0.1"
        );
        assert_eq!(
            webhook_host("https://spillway.example:443/mutate").unwrap(),
            "spillway.example"
        );
        assert_eq!(webhook_host("https://[::1]:8443/mutate").unwrap(), "::1");
        let error = webhook_host("http://127.0.0.1:8443/mutate")
            .unwrap_err()
            .to_string();
        assert!(error.contains("https://"), "{error}");
        assert!(webhook_host("not a url").is_err());
    }

    #[test]
    fn listen_defaults_to_the_url_port() {
        let url = Some("https://127.0.0.1:18443/mutate");
        assert_eq!(listen_address(None, url).to_string(), "0.0.0.0:18443");
        assert_eq!(
            listen_address(None, Some("https://hook.example/mutate")).port(),
            443
        );
        assert_eq!(listen_address(None, None).port(), 8443);
        let given = "127.0.0.1:9443".parse().unwrap();
        assert_eq!(listen_address(Some(given), url), given);
    }

    #[test]
    fn pem_wraps_der_in_64_column_lines() {
        let text = pem(&[vec![0u8; 60]]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines.last(), Some(&"-----END CERTIFICATE-----"));
    }

    #[test]
    fn keys_and_their_directory_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = private_dir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path()), 0o700);
        let key = dir.path().join("tls.key");
        write_private(&key, "secret").unwrap();
        assert_eq!(mode(&key), 0o600);
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "secret");
    }

    #[test]
    fn registration_never_blocks_pods() {
        let config = webhook_configuration("spillway", "https://127.0.0.1:8443/mutate", "CA");
        let hook = &config["webhooks"][0];
        assert_eq!(hook["failurePolicy"], "Ignore");
        assert_eq!(hook["timeoutSeconds"], 2);
        assert_eq!(hook["sideEffects"], "None");
        assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
        assert_eq!(hook["clientConfig"]["caBundle"], "Q0E=");
        let parsed: MutatingWebhookConfiguration = serde_json::from_value(config).unwrap();
        assert_eq!(parsed.metadata.name.as_deref(), Some("spillway"));
    }
}
