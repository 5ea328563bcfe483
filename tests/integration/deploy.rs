//! The deployment files: the systemd unit passes `systemd-analyze verify`,
//! the Kubernetes manifests pass `kubernetes-validate`, and the example
//! configs pass `qcapsd check-config`.

use crate::common::{self, require_tool};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn systemd_unit_verifies() {
    let Some(analyze) = require_tool("systemd-analyze") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Point ExecStart at the binary just built (verify checks it exists).
    let unit = std::fs::read_to_string(repo("deploy/systemd/qcapsd.service"))
        .unwrap()
        .replace("/usr/local/bin/qcapsd", env!("CARGO_BIN_EXE_qcapsd"));
    assert!(
        unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "reload is SIGHUP"
    );
    let f = dir.path().join("qcapsd.service");
    std::fs::write(&f, unit).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&f)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !said.contains("qcapsd.service:"),
        "systemd-analyze verify: {said}"
    );
}

#[test]
fn kubernetes_manifests_validate() {
    let Some(kv) = require_tool("kubernetes-validate") else {
        return;
    };
    let out = Command::new(kv)
        .arg(repo("deploy/kubernetes/qcapsd.yaml"))
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert_eq!(said.matches("passed for resource").count(), 3, "{said}");
}

#[test]
fn example_configs_are_valid() {
    let f = repo("deploy/config/qcapsd.yaml");
    let out = common::qcapsd(&["check-config", f.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The ConfigMap's embedded config too.
    let k8s = std::fs::read_to_string(repo("deploy/kubernetes/qcapsd.yaml")).unwrap();
    let start = k8s.find("config.yaml: |\n").unwrap() + "config.yaml: |\n".len();
    let body: String = k8s[start..]
        .lines()
        .take_while(|l| l.starts_with("    "))
        .map(|l| format!("{}\n", &l[4..]))
        .collect();
    let cfg = qcapsd::config::Config::parse(&body).unwrap();
    assert_eq!(cfg.metrics_listen.unwrap().port(), 9734);
}
