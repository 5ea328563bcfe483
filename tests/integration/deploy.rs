//! The deployment files: the systemd unit passes `systemd-analyze verify`,
//! the Kubernetes manifests pass `kubernetes-validate` and hold what they
//! promise (hardening, shared volumes, the rules), and the example configs
//! pass `qcapsd check-config`.

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

/// Every document of a YAML file.
fn yaml_docs(rel: &str) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(repo(rel)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [serde_yaml::Value], kind: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// The config embedded in a ConfigMap, validated.
fn embedded_config(docs: &[serde_yaml::Value]) -> qcapsd::config::Config {
    let text = kind(docs, "ConfigMap")["data"]["config.yaml"]
        .as_str()
        .unwrap();
    qcapsd::config::Config::parse(text).unwrap()
}

#[ignore = "needs kubernetes-validate"]
#[test]
fn kubernetes_manifests_validate() {
    let kv = require_tool("kubernetes-validate");
    for (file, resources) in [
        ("deploy/kubernetes/qcapsd.yaml", 3),
        ("deploy/kubernetes/sidecar.yaml", 2),
    ] {
        let out = Command::new(&kv)
            .args(["--strict"])
            .arg(repo(file))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{file}: {said}");
        assert_eq!(
            said.matches("passed for resource").count(),
            resources,
            "{file}: {said}"
        );
    }
}

/// What every qcapsd container in the manifests must be: no privilege, a
/// read-only root, every capability dropped, a non-root user, probes on
/// the metrics port (the only port), resources with a memory limit, and
/// /dev/kvm through a device plugin, never a privileged hostPath.
fn assert_hardened(c: &serde_yaml::Value, pod: &serde_yaml::Value) {
    let name = c["name"].as_str().unwrap();
    let sc = &c["securityContext"];
    let non_root = sc["runAsNonRoot"]
        .as_bool()
        .or(pod["securityContext"]["runAsNonRoot"].as_bool());
    assert_eq!(non_root, Some(true), "{name}: runAsNonRoot");
    let uid = sc["runAsUser"]
        .as_u64()
        .or(pod["securityContext"]["runAsUser"].as_u64());
    assert_eq!(uid, Some(10733), "{name}: the image's numeric user");
    assert_ne!(sc["privileged"].as_bool(), Some(true), "{name}: privileged");
    assert_eq!(
        sc["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "{name}"
    );
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true), "{name}");
    assert_eq!(
        sc["capabilities"]["drop"][0].as_str(),
        Some("ALL"),
        "{name}"
    );
    assert!(
        sc["capabilities"]["add"].is_null(),
        "{name}: adds no capability"
    );
    let ports = c["ports"].as_sequence().unwrap();
    assert_eq!(ports.len(), 1, "{name}: one port");
    assert_eq!(ports[0]["containerPort"].as_u64(), Some(9734));
    for probe in ["livenessProbe", "startupProbe"] {
        assert_eq!(
            c[probe]["httpGet"]["port"].as_str(),
            Some("metrics"),
            "{name}: {probe}"
        );
    }
    assert!(
        c["resources"]["requests"]["memory"].is_string(),
        "{name}: requests"
    );
    assert!(
        c["resources"]["limits"]["memory"].is_string(),
        "{name}: memory limit"
    );
    assert_eq!(
        c["resources"]["limits"]["devices.kubevirt.io/kvm"].as_str(),
        Some("1"),
        "{name}: /dev/kvm from the device plugin"
    );
    let volumes = pod["volumes"].as_sequence().unwrap();
    assert!(
        !volumes
            .iter()
            .any(|v| v["hostPath"]["path"].as_str() == Some("/dev/kvm")),
        "no /dev/kvm hostPath: the device cgroup refuses it without privilege"
    );
}

#[test]
fn the_daemonset_is_hardened_and_writes_where_nfd_and_the_compute_pods_read() {
    let docs = yaml_docs("deploy/kubernetes/qcapsd.yaml");
    let pod = &kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_hardened(c, pod);
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    let cfg = embedded_config(&docs);
    assert_eq!(cfg.listen, None, "no TCP query API: the socket only");
    assert_eq!(cfg.metrics_listen.unwrap().port(), 9734);
    // What the config names is on a volume: the socket and the shims on
    // the shared hostPath, the cache on the node, the labels in NFD's
    // features.d.
    let mount_of = |path: &Path| -> String {
        let mounts = c["volumeMounts"].as_sequence().unwrap();
        let m = mounts
            .iter()
            .filter(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
            .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
            .unwrap_or_else(|| panic!("{} is on no volume", path.display()));
        m["name"].as_str().unwrap().to_owned()
    };
    let host_path = |volume: &str| -> String {
        let v = pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str() == Some(volume))
            .unwrap();
        v["hostPath"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{volume} is no hostPath"))
            .to_owned()
    };
    assert_eq!(
        host_path(&mount_of(&cfg.unix_socket.unwrap().0)),
        "/run/qcapsd"
    );
    assert_eq!(
        host_path(&mount_of(&cfg.shim_dir.unwrap().0)),
        "/run/qcapsd"
    );
    assert_eq!(host_path(&mount_of(&cfg.cache_dir.0)), "/var/cache/qcapsd");
    assert_eq!(
        host_path(&mount_of(&cfg.nfd_features_file.unwrap().0)),
        "/etc/kubernetes/node-feature-discovery/features.d"
    );
    // The init container hands exactly those directories to the agent's
    // user, with CHOWN and nothing else.
    let init = &pod["initContainers"][0];
    assert_eq!(init["command"][0].as_str(), Some("chown"));
    assert_eq!(init["command"][1].as_str(), Some("10733:10733"));
    let adds: Vec<&str> = init["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(adds, ["CHOWN"]);
    assert_eq!(
        init["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );
    let chowned: Vec<&str> = init["command"].as_sequence().unwrap()[2..]
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    for volume in ["cache", "run", "features"] {
        let at = init["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["name"].as_str() == Some(volume))
            .unwrap();
        assert!(
            chowned.contains(&at["mountPath"].as_str().unwrap()),
            "{volume} is handed over"
        );
    }
}

#[test]
fn the_sidecar_shares_the_socket_and_the_shims_with_the_compute_container() {
    let docs = yaml_docs("deploy/kubernetes/sidecar.yaml");
    let pod = &kind(&docs, "Pod")["spec"];
    let sidecar = &pod["initContainers"][0];
    assert_eq!(
        sidecar["restartPolicy"].as_str(),
        Some("Always"),
        "a native sidecar: started, and ready, before the compute container"
    );
    assert_eq!(
        sidecar["startupProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_hardened(sidecar, pod);
    let cfg = embedded_config(&docs);
    assert_eq!(cfg.listen, None);
    let shims = cfg.shim_dir.unwrap().0;
    let socket = cfg.unix_socket.unwrap().0;
    let compute = &pod["containers"][0];
    let mount = |c: &serde_yaml::Value, volume: &str| -> Option<String> {
        c["volumeMounts"]
            .as_sequence()?
            .iter()
            .find(|m| m["name"].as_str() == Some(volume))
            .map(|m| m["mountPath"].as_str().unwrap().to_owned())
    };
    let shared = mount(sidecar, "shared").unwrap();
    assert_eq!(
        mount(compute, "shared"),
        Some(shared.clone()),
        "one path in both"
    );
    assert!(shims.starts_with(&shared) && socket.starts_with(&shared));
    let shared_volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some("shared"))
        .unwrap();
    assert!(shared_volume["emptyDir"].is_mapping(), "an emptyDir");
    let env = |name: &str| -> String {
        compute["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .unwrap()["value"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        env("PATH").split(':').next(),
        shims.to_str(),
        "the shims come first on the compute container's PATH"
    );
    assert_eq!(env("QCAPSD_SOCKET"), socket.to_str().unwrap());
}

#[test]
fn monitoring_carries_the_rules_file_and_scrapes_as_job_qcapsd() {
    let rules = std::fs::read_to_string(repo("deploy/prometheus/qcapsd.rules.yml")).unwrap();
    let text = std::fs::read_to_string(repo("deploy/kubernetes/monitoring.yaml")).unwrap();
    // The PrometheusRule is the rules file's groups under `spec:`, made
    // from it (QCAPSD_BLESS=1 rewrites it).
    let at = rules.find("\ngroups:").unwrap() + 1;
    let groups: String = rules[at..]
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_owned()
            } else {
                format!("  {l}\n")
            }
        })
        .collect();
    let rule_doc = format!(
        "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: qcapsd\n  namespace: qcapsd\n  labels:\n    app.kubernetes.io/name: qcapsd\nspec:\n{groups}"
    );
    let monitor = &text[..text.find("---\n").unwrap() + 4];
    let expected = format!("{monitor}{rule_doc}");
    if std::env::var("QCAPSD_BLESS").as_deref() == Ok("1") {
        std::fs::write(repo("deploy/kubernetes/monitoring.yaml"), &expected).unwrap();
    }
    assert!(
        text == expected,
        "deploy/kubernetes/monitoring.yaml's PrometheusRule differs from deploy/prometheus/qcapsd.rules.yml (QCAPSD_BLESS=1 cargo test monitoring rewrites it)"
    );
    let docs = yaml_docs("deploy/kubernetes/monitoring.yaml");
    let pm = kind(&docs, "PodMonitor");
    let ds = yaml_docs("deploy/kubernetes/qcapsd.yaml");
    let labels = &kind(&ds, "DaemonSet")["spec"]["template"]["metadata"]["labels"];
    for (k, v) in pm["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(
            &labels[k.as_str().unwrap()],
            v,
            "the PodMonitor selects the agents"
        );
    }
    let ep = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(ep["port"].as_str(), Some("metrics"));
    assert_eq!(ep["relabelings"][0]["targetLabel"].as_str(), Some("job"));
    assert_eq!(
        ep["relabelings"][0]["replacement"].as_str(),
        Some("qcapsd"),
        "the rules expect job=\"qcapsd\""
    );
}

#[ignore = "needs promtool"]
#[test]
fn the_prometheus_rule_resource_passes_promtool() {
    let promtool = require_tool("promtool");
    let docs = yaml_docs("deploy/kubernetes/monitoring.yaml");
    let spec = &kind(&docs, "PrometheusRule")["spec"];
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("rules.yml");
    std::fs::write(&f, serde_yaml::to_string(spec).unwrap()).unwrap();
    let said = common::check_rules(&promtool, &f);
    assert!(said.contains("SUCCESS"), "{said}");
}

#[test]
fn example_configs_are_valid() {
    for f in ["deploy/config/qcapsd.yaml", "deploy/container/qcapsd.yaml"] {
        let out = common::qcapsd(&["check-config", repo(f).to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The container's: no TCP query API, the metrics port the image
    // exposes, the socket and the shims on one volume.
    let c = qcapsd::config::Config::load(&repo("deploy/container/qcapsd.yaml")).unwrap();
    assert_eq!(c.listen, None);
    assert_eq!(c.metrics_listen.unwrap().port(), 9734);
    let file = std::fs::read_to_string(repo("deploy/container/Containerfile")).unwrap();
    assert!(file.contains("EXPOSE 9734\n"));
    assert_eq!(file.matches("EXPOSE").count(), 1, "one port");
    assert!(file.contains("VOLUME [\"/var/cache/qcapsd\"]"));
    assert_eq!(c.cache_dir.0, Path::new("/var/cache/qcapsd"));
    assert!(c.shim_dir.unwrap().0.starts_with("/run/qcapsd"));
    assert!(c.unix_socket.unwrap().0.starts_with("/run/qcapsd"));
}
