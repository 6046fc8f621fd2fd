//! The image `make image` builds, built and run without a container engine:
//! `deploy/image/build-oci` assembles an OCI archive from the spillway binary, skopeo
//! reads and copies it (so it is a well-formed archive other tools take), umoci unpacks it
//! into a runtime bundle, and runc runs it as the chart runs the image (user 65532, a
//! read-only root file system): `spillway --version` prints the binary's version and
//! `spillway webhook` answers `/readyz` once its index has synced against the test bed's
//! apiserver.
//!
//! runc needs root here (a rootless runc needs a user namespace set-up this test does not
//! make); `make test` runs as root in CI and installs runc, umoci and skopeo.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use spillway_e2e::{free_port, log_path, repo_root, run_dir, spillway_binary, wait_until};

const TAG: &str = "e2e";

/// Runs a command and returns its stdout, failing with its stderr.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    ensure!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// An unpacked image: a runtime bundle whose `config.json` the image's config produced.
struct Bundle {
    dir: PathBuf,
    config: Value,
}

impl Bundle {
    fn unpack(layout: &Path, into: &Path) -> anyhow::Result<Self> {
        let image = format!("{}:{TAG}", layout.display());
        run(
            "umoci",
            &["unpack", "--image", &image, &into.display().to_string()],
        )?;
        let config = serde_json::from_slice(&std::fs::read(into.join("config.json"))?)?;
        Ok(Self {
            dir: into.to_owned(),
            config,
        })
    }

    /// Writes `config.json` for one run: `args` instead of the image's command, no
    /// terminal, a read-only root, and `edit` for the rest.
    fn prepare(&self, args: &[String], edit: impl FnOnce(&mut Value)) -> anyhow::Result<()> {
        let mut config = self.config.clone();
        config["process"]["args"] = json!(args);
        config["process"]["terminal"] = json!(false);
        config["root"]["readonly"] = json!(true);
        edit(&mut config);
        std::fs::write(
            self.dir.join("config.json"),
            serde_json::to_vec_pretty(&config)?,
        )?;
        Ok(())
    }
}

/// A runc container, deleted (killed if it still runs) when dropped.
struct Container {
    id: String,
}

impl Container {
    fn name(purpose: &str) -> Self {
        Self {
            id: format!("spillway-image-{purpose}-{}", std::process::id()),
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.id])
            .stderr(Stdio::null())
            .status();
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if std::time::Instant::now() > deadline {
            bail!("the container did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A directory the container's user (65532) can read, mounted read-only: the webhook's
/// serving certificate and a kubeconfig for the test bed's apiserver.
fn webhook_files(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let pki = spillway_common::pki::issue(&["127.0.0.1"]);
    std::fs::write(dir.join("tls.crt"), &pki.cert_pem)?;
    std::fs::write(dir.join("tls.key"), &pki.key_pem)?;
    for file in ["ca.crt", "admin.crt", "admin.key"] {
        std::fs::copy(run_dir().join("pki").join(file), dir.join(file))?;
    }
    let kubeconfig = std::fs::read_to_string(run_dir().join("kubeconfig"))?;
    let server = kubeconfig
        .lines()
        .find_map(|line| line.trim().strip_prefix("server: "))
        .context("the test bed's kubeconfig names its server")?;
    std::fs::write(
        dir.join("kubeconfig"),
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testbed\n  cluster:\n    \
             server: {server}\n    certificate-authority: /etc/spillway/ca.crt\nusers:\n\
             - name: admin\n  user:\n    client-certificate: /etc/spillway/admin.crt\n    \
             client-key: /etc/spillway/admin.key\ncontexts:\n- name: testbed\n  context: \
             {{cluster: testbed, user: admin}}\ncurrent-context: testbed\n"
        ),
    )?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        std::fs::set_permissions(entry?.path(), std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed (e2e/testbed up), root, and runc, umoci and skopeo (make test installs them)"]
async fn the_image_builds_without_an_engine_and_runs_under_runc() -> anyhow::Result<()> {
    let binary = spillway_binary()?;
    let version_line = run(&binary.display().to_string(), &["--version"])?;
    let version = version_line
        .split_whitespace()
        .nth(1)
        .context("spillway --version prints a version")?
        .to_owned();
    let work = tempfile::tempdir()?;
    let archive = work.path().join("spillway.oci.tar");
    let built = run(
        &repo_root()
            .join("deploy/image/build-oci")
            .display()
            .to_string(),
        &[
            "--binary",
            &binary.display().to_string(),
            "--output",
            &archive.display().to_string(),
            "--tag",
            TAG,
        ],
    )?;
    assert_eq!(built.trim(), archive.display().to_string());

    // skopeo reads the archive as any registry client would read the image.
    let reference = format!("oci-archive:{}:{TAG}", archive.display());
    let inspected: Value = serde_json::from_str(&run("skopeo", &["inspect", &reference])?)?;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    assert_eq!(inspected["Architecture"], arch, "{inspected}");
    assert_eq!(inspected["Os"], "linux", "{inspected}");
    let labels = &inspected["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], version.as_str());
    assert_eq!(labels["org.opencontainers.image.title"], "spillway");
    assert!(
        labels["org.opencontainers.image.revision"]
            .as_str()
            .is_some_and(|r| r.len() == 40),
        "the revision label is the commit: {labels}"
    );
    let config: Value =
        serde_json::from_str(&run("skopeo", &["inspect", "--config", &reference])?)?;
    assert_eq!(config["config"]["User"], "65532:65532", "{config}");
    assert_eq!(
        config["config"]["Entrypoint"],
        json!(["/usr/local/bin/spillway"])
    );
    for port in ["8443/tcp", "9090/tcp", "10250/tcp"] {
        assert!(
            config["config"]["ExposedPorts"].get(port).is_some(),
            "{port} exposed: {config}"
        );
    }

    // skopeo copies it into a layout (every blob re-read and checked), umoci unpacks it.
    let layout = work.path().join("layout");
    run(
        "skopeo",
        &[
            "copy",
            &reference,
            &format!("oci:{}:{TAG}", layout.display()),
        ],
    )?;
    let bundle = Bundle::unpack(&layout, &work.path().join("bundle"))?;
    assert_eq!(bundle.config["process"]["user"]["uid"], 65532);
    assert_eq!(
        bundle.config["process"]["args"],
        json!(["/usr/local/bin/spillway", "--help"])
    );

    // `spillway --version` inside the container: the loader and libraries it links are
    // in the image.
    bundle.prepare(
        &["/usr/local/bin/spillway".into(), "--version".into()],
        |_| {},
    )?;
    let container = Container::name("version");
    let printed = run(
        "runc",
        &[
            "run",
            "--bundle",
            &bundle.dir.display().to_string(),
            &container.id,
        ],
    )?;
    assert_eq!(printed, version_line);
    drop(container);

    // `spillway webhook` inside the container, on the host's network (the test bed's
    // apiserver is on loopback), with its certificate and kubeconfig mounted read-only.
    let files = work.path().join("files");
    webhook_files(&files)?;
    let (port, admin_port) = (free_port()?, free_port()?);
    bundle.prepare(
        &[
            "/usr/local/bin/spillway".into(),
            "webhook".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--admin-addr".into(),
            format!("127.0.0.1:{admin_port}"),
            "--tls-cert".into(),
            "/etc/spillway/tls.crt".into(),
            "--tls-key".into(),
            "/etc/spillway/tls.key".into(),
            "--shutdown-delay-seconds".into(),
            "1".into(),
        ],
        |config| {
            if let Some(namespaces) = config["linux"]["namespaces"].as_array_mut() {
                namespaces.retain(|ns| ns["type"] != "network");
            }
            config["process"]["env"]
                .as_array_mut()
                .expect("the image sets PATH")
                .push(json!("KUBECONFIG=/etc/spillway/kubeconfig"));
            config["mounts"]
                .as_array_mut()
                .expect("mounts")
                .push(json!({
                    "destination": "/etc/spillway",
                    "type": "bind",
                    "source": files.display().to_string(),
                    "options": ["rbind", "ro"],
                }));
        },
    )?;
    let container = Container::name("webhook");
    let log = std::fs::File::create(log_path("image-webhook"))?;
    let mut child = Command::new("runc")
        .args([
            "run",
            "--bundle",
            &bundle.dir.display().to_string(),
            &container.id,
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let readyz = format!("http://127.0.0.1:{admin_port}/readyz");
    let ready = wait_until(
        "the webhook in the container ready (index synced)",
        Duration::from_secs(60),
        || async {
            Ok(reqwest::get(&readyz)
                .await
                .is_ok_and(|r| r.status().is_success()))
        },
    )
    .await;
    if ready.is_err() {
        let _ = child.kill();
    }
    ready.context("see e2e/.run/logs/image-webhook.log")?;
    let metrics = reqwest::get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("spillway_index_pods"),
        "the webhook's metrics are served: {metrics}"
    );
    run("runc", &["kill", &container.id, "TERM"])?;
    let status = wait_exit(&mut child, Duration::from_secs(30))?;
    assert!(status.success(), "a SIGTERM stops it cleanly: {status}");
    Ok(())
}
