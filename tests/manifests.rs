//! The deployment files under configs/ are checked, not just written: the
//! Kubernetes manifests against the API's schemas (kubernetes-validate,
//! strict: unknown fields fail), and the tlsplice configuration they ship
//! with `tlsplice check`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::*;

/// The Kubernetes version the manifests target (preStop `sleep` needs 1.30).
const KUBERNETES: &str = "1.31";

fn manifests() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/kubernetes");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "manifests in {}", dir.display());
    files
}

fn validate(files: &[PathBuf]) -> (bool, String) {
    require_tool("kubernetes-validate");
    let mut cmd = Command::new("kubernetes-validate");
    cmd.args(["--strict", "--no-warn", "-k", KUBERNETES])
        .args(files)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (status, out, err) = run_bounded(cmd, Duration::from_secs(60));
    (status.success(), format!("{out}{err}"))
}

#[test]
fn kubernetes_manifests_match_the_api_schemas() {
    let files = manifests();
    let (ok, output) = validate(&files);
    assert!(ok, "{output}");
    for kind in [
        "deployment/tlsplice",
        "daemonset/tlsplice-edge",
        "service/tlsplice",
        "poddisruptionbudget/tlsplice",
        "configmap/tlsplice",
    ] {
        assert!(output.contains(kind), "{kind} was not validated:\n{output}");
    }

    // The validator does reject what the API server would: a misspelt field.
    let dir = tempfile::tempdir().unwrap();
    let deployment = fs::read_to_string(
        files
            .iter()
            .find(|f| f.ends_with("deployment.yaml"))
            .unwrap(),
    )
    .unwrap()
    .replace(
        "terminationGracePeriodSeconds",
        "terminationGracePeriodSecond",
    );
    let bad = write_file(dir.path(), "bad.yaml", deployment);
    let (ok, output) = validate(&[bad]);
    assert!(!ok, "a misspelt field passed:\n{output}");
}

#[test]
fn the_configmap_holds_a_valid_tlsplice_config() {
    let configmap = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/kubernetes/configmap.yaml");
    let (status, toml, err) = run_bounded(
        {
            let mut cmd = Command::new("python3");
            cmd.args([
                "-c",
                "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['data']['tlsplice.toml'])",
            ])
            .arg(&configmap)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            cmd
        },
        Duration::from_secs(30),
    );
    assert!(status.success(), "{err}");

    // Lay out the mounts the manifests declare, under a temp dir.
    let root = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let mount = |sub: &str, name: &str, from: &Path| {
        let dir = root.path().join(sub);
        fs::create_dir_all(&dir).unwrap();
        fs::copy(from, dir.join(name)).unwrap();
    };
    mount("server", "tls.crt", &pki.server.cert_path);
    mount("server", "tls.key", &pki.server.key_path);
    mount("client-ca", "ca.crt", &pki.ca_path);
    fs::create_dir_all(root.path().join("tickets")).unwrap();
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 80]);
    write_file(
        &root.path().join("tickets"),
        "tickets.keys",
        format!("{key}\n"),
    );

    let local = toml
        .replace("/etc/tlsplice/", &format!("{}/", root.path().display()))
        .replace("api-backend.default.svc.cluster.local", "127.0.0.1");
    let config = write_file(root.path(), "tlsplice.toml", local);
    let (status, out, err) = run_tlsplice(&["check", "-c", config.to_str().unwrap()], None);
    assert!(status.success(), "tlsplice check failed:\n{out}{err}");
}
