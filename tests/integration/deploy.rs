//! The deployment files: the systemd unit passes `systemd-analyze verify`,
//! the Kubernetes manifests pass `kubernetes-validate`, and the example
//! configs pass `qcapsd check-config`.

use crate::common::{self, require_tool};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[ignore = "needs systemd-analyze"]
#[test]
fn systemd_unit_verifies() {
    let analyze = require_tool("systemd-analyze");
    let dir = tempfile::tempdir().unwrap();
    // Point ExecStart at the binary just built (verify checks it exists).
    let unit = std::fs::read_to_string(repo("deploy/systemd/qcapsd.service"))
        .unwrap()
        .replace("/usr/bin/qcapsd", env!("CARGO_BIN_EXE_qcapsd"));
    assert!(
        unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "reload is SIGHUP"
    );
    let f = dir.path().join("qcapsd.service");
    std::fs::write(&f, unit).unwrap();
    // The man page comes with the package, not with this checkout.
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
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

#[ignore = "needs systemd-analyze"]
#[test]
fn systemd_unit_exposure_is_at_most_2_and_every_directive_left_out_says_why() {
    let analyze = require_tool("systemd-analyze");
    let unit = repo("deploy/systemd/qcapsd.service");
    let out = Command::new(analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for qcapsd.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure in:\n{text}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{text}");
    // Every directive the tool counts against the unit is explained in a
    // comment of the unit.
    let file = std::fs::read_to_string(&unit).unwrap();
    let comments: Vec<&str> = file.lines().filter(|l| l.starts_with('#')).collect();
    for line in text.lines().filter(|l| l.starts_with('✗')) {
        let directive = line
            .trim_start_matches('✗')
            .split_whitespace()
            .next()
            .unwrap();
        // "RestrictAddressFamilies=~AF_UNIX" → "RestrictAddressFamilies=",
        // "RootDirectory=/RootImage=" → both names.
        let names: Vec<String> = directive
            .split('/')
            .map(|d| format!("{}=", d.split('=').next().unwrap()))
            .collect();
        assert!(
            names
                .iter()
                .all(|n| comments.iter().any(|c| c.contains(n.as_str()))),
            "{directive} is counted against the unit but no comment says why"
        );
    }
}

#[ignore = "needs kubernetes-validate"]
#[test]
fn kubernetes_manifests_validate() {
    let kv = require_tool("kubernetes-validate");
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
