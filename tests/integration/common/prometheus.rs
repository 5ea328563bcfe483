//! A real Prometheus server scraping an agent, with rules of the test's
//! choosing, for tests of what operators' alerting sees.

use super::http::{free_port, raw_http};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `promtool check rules FILE`, which must pass; returns what it printed.
pub fn check_rules(promtool: &Path, file: &Path) -> String {
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "promtool check rules {}: {said}{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    said
}

pub struct Prometheus {
    child: std::process::Child,
    pub port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts `binary` in `dir`, scraping the agent on `agent_port` every
    /// second as `job="qcapsd"` and evaluating `rules` every second; returns
    /// once it is ready.
    pub fn start(binary: &Path, dir: &Path, agent_port: u16, rules: &str) -> Prometheus {
        std::fs::write(dir.join("rules.yml"), rules).unwrap();
        let port = free_port();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: qcapsd\n    static_configs:\n      - targets: ['127.0.0.1:{agent_port}']\n",
                dir.join("rules.yml").display(),
            ),
        )
        .unwrap();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        let prom = Prometheus { child, port };
        let ready =
            super::poll_until_for(Duration::from_secs(30), Duration::from_millis(100), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && raw_http(
                        port,
                        b"GET /-/ready HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
                    )
                    .status
                        == 200
            });
        assert!(
            ready,
            "prometheus did not start: {}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        prom
    }

    pub fn api(&self, path_and_query: &str) -> serde_json::Value {
        let r = raw_http(
            self.port,
            format!(
                "GET {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// The result vector of an instant query (`expr` URL-encoded here).
    pub fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let encoded: String = expr
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        self.api(&format!("/api/v1/query?query={encoded}"))["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn alert_state(&self, name: &str) -> Option<String> {
        let v = self.api("/api/v1/alerts");
        v["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == name)
            .map(|a| a["state"].as_str().unwrap_or("").to_owned())
    }
}
