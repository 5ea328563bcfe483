//! Node labels for Kubernetes' scheduler, through node-feature-discovery's
//! `local` source (config `nfd_features_file`; the rules in
//! [`crate::support::nfd`]).
//!
//! A small, chosen set, not a snapshot of everything: by default the QEMU
//! version per architecture and whether KVM runs VMs here; a label per
//! usable CPU model only for models on `nfd_cpu_models`, and per machine
//! type only for types on `nfd_machine_types`. Where several emulators are
//! for one architecture, the one named for it speaks
//! ([`crate::qemu::named_for_arch`]), else the first by name.
//!
//! The file carries an `# +expiry-time=` a few revalidation intervals
//! ahead and is rewritten at every revalidation pass, so the labels vanish
//! when the agent stops. It is written as a dotfile and renamed (NFD
//! ignores dotfiles), and never exceeds NFD's 64 KiB (labels that do not
//! fit, or whose name or value breaks the rules, are skipped and counted).

use super::metrics::Metrics;
use super::pass::{Feature, Snapshot, Work};
use crate::config::defaults;
use crate::qemu::{Capabilities, named_for_arch};
use crate::support::nfd::{MAX_FILE, PREFIX, is_label_part};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The node labels as a feature of the agent: the feature file rewritten
/// from memory after every pass, with a fresh expiry. Its own task, so a
/// `features.d` on a hung mount delays neither readiness nor the next
/// pass. Skipped labels and a failed write are logged when they change.
pub struct NodeLabels {
    metrics: Arc<Metrics>,
    /// What the last write said (skipped labels, or why it failed), so
    /// each is logged once, not at every pass.
    said: Mutex<Vec<String>>,
}

impl NodeLabels {
    pub fn new(metrics: Arc<Metrics>) -> NodeLabels {
        NodeLabels {
            metrics,
            said: Mutex::new(Vec::new()),
        }
    }

    /// Writes the feature file (config `nfd_features_file`) for `snap`.
    pub async fn write(&self, snap: &Snapshot) {
        let cfg = &snap.config;
        let Some(file) = cfg.nfd_features_file.as_ref().map(|f| f.0.clone()) else {
            return;
        };
        let file_names: Vec<(String, String)> = snap
            .probed()
            .map(|(spec, _)| {
                let file_name = spec
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (spec.name.clone(), file_name)
            })
            .collect();
        let sources: Vec<Source> = snap
            .probed()
            .zip(&file_names)
            .map(|((_, entry), (name, file_name))| Source {
                name,
                file_name,
                caps: &entry.caps,
            })
            .collect();
        let lists =
            |v: &[crate::config::LabelPart]| v.iter().map(|l| l.0.clone()).collect::<Vec<_>>();
        let (cpu_models, machine_types) =
            (lists(&cfg.nfd_cpu_models), lists(&cfg.nfd_machine_types));
        let ahead =
            (*cfg.revalidate_interval * defaults::NFD_EXPIRY_PASSES).max(defaults::NFD_EXPIRY_MIN);
        let rendered = render(
            &sources,
            Wanted {
                cpu_models: &cpu_models,
                machine_types: &machine_types,
            },
            SystemTime::now() + ahead,
        );
        self.metrics
            .node_labels(rendered.written, rendered.skipped.len());
        let (path, text) = (file.clone(), rendered.text);
        let written = tokio::task::spawn_blocking(move || write(&path, &text)).await;
        let mut said = rendered.skipped;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => said.push(format!(
                "cannot write {}: {e}; the labels are kept off the node (make its directory, NFD's features.d, writable by the agent's user, or unset nfd_features_file)",
                file.display()
            )),
            Err(e) => said.push(format!(
                "the write of {} did not complete: {e}",
                file.display()
            )),
        }
        let mut last = self.said.lock().unwrap_or_else(|p| p.into_inner());
        if *last != said {
            for s in &said {
                tracing::warn!(file = %file.display(), "node labels: {s}");
            }
            if said.is_empty() && !last.is_empty() {
                tracing::info!(file = %file.display(), "node labels written again in full");
            }
            *last = said;
        }
    }
}

impl Feature for NodeLabels {
    fn name(&self) -> &'static str {
        "node labels"
    }

    fn after_pass(self: Arc<Self>, snapshot: Arc<Snapshot>) -> Option<Work> {
        snapshot.config.nfd_features_file.as_ref()?;
        Some(Box::pin(async move { self.write(&snapshot).await }))
    }
}

/// One emulator's document, as labels see it.
pub struct Source<'a> {
    /// The configured name.
    pub name: &'a str,
    /// Its binary's file name.
    pub file_name: &'a str,
    pub caps: &'a Capabilities,
}

/// What to label beyond the defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wanted<'a> {
    /// CPU models labelled where usable (under each document's `accel`).
    pub cpu_models: &'a [String],
    /// Machine types labelled where the emulator has them (name or alias).
    pub machine_types: &'a [String],
}

/// A feature file, rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The file's text.
    pub text: String,
    /// Labels in it.
    pub written: usize,
    /// Labels left out, each with why.
    pub skipped: Vec<String>,
}

/// The labels `sources` call for, in file order (KVM, then per
/// architecture its version, CPU models and machine types), with those
/// that break the label rules set apart.
pub fn labels(sources: &[Source], wanted: Wanted) -> (Vec<(String, String)>, Vec<String>) {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut skipped = Vec::new();
    let mut add = |name: String, value: String| {
        if out.iter().any(|(n, _)| n[PREFIX.len()..] == name) {
            skipped.push(format!(
                "{PREFIX}{name}: given twice (an architecture named like another label)"
            ));
        } else if !is_label_part(&name) {
            skipped.push(format!("{PREFIX}{name}: not a label name"));
        } else if !is_label_part(&value) {
            skipped.push(format!(
                "{PREFIX}{name}: value '{value}' is not a label value"
            ));
        } else {
            out.push((format!("{PREFIX}{name}"), value));
        }
    };
    let kvm = sources.iter().any(|s| s.caps.accel == "kvm");
    add("kvm".to_owned(), kvm.to_string());
    let (cpu_models, machine_types) = (distinct(wanted.cpu_models), distinct(wanted.machine_types));
    for (arch, caps) in per_arch(sources) {
        if let Some(q) = &caps.qemu {
            add(format!("{arch}.qemu-version"), q.version.clone());
        }
        for model in &cpu_models {
            let usable = caps
                .cpu_models
                .iter()
                .any(|m| m.name == **model && m.usable == Some(true));
            if usable {
                add(format!("{arch}.cpu.{model}"), "true".to_owned());
            }
        }
        for machine in &machine_types {
            let has = caps
                .machines
                .iter()
                .any(|m| m.name == **machine || m.alias.as_deref() == Some(machine.as_str()));
            if has {
                add(format!("{arch}.machine.{machine}"), "true".to_owned());
            }
        }
    }
    (out, skipped)
}

/// `v` without repeats, in order.
fn distinct(v: &[String]) -> Vec<&String> {
    let mut seen = std::collections::BTreeSet::new();
    v.iter().filter(|s| seen.insert(s.as_str())).collect()
}

/// One document per architecture: the emulator named for it, else the
/// first by name.
fn per_arch<'a>(sources: &'a [Source<'a>]) -> BTreeMap<&'a str, &'a Capabilities> {
    let mut by_arch: BTreeMap<&str, Vec<&Source>> = BTreeMap::new();
    for s in sources {
        if let Some(arch) = s.caps.arch.as_deref() {
            by_arch.entry(arch).or_default().push(s);
        }
    }
    by_arch
        .into_iter()
        .filter_map(|(arch, mut v)| {
            v.sort_by_key(|s| {
                let named = named_for_arch(s.name, arch) || named_for_arch(s.file_name, arch);
                (!named, s.name)
            });
            v.first().map(|s| (arch, s.caps))
        })
        .collect()
}

/// The feature file for `sources`, expiring at `expires`: within
/// [`MAX_FILE`], labels past it skipped.
pub fn render(sources: &[Source], wanted: Wanted, expires: SystemTime) -> Rendered {
    let (labels, mut skipped) = labels(sources, wanted);
    let mut text = format!(
        "# Node labels written by qcapsd (config nfd_features_file), rewritten at each\n# revalidation pass; they expire unless it runs. Do not edit.\n# +expiry-time={}\n",
        crate::support::timefmt::rfc3339(expires)
    );
    let mut written = 0;
    for (name, value) in labels {
        let line = format!("{name}={value}\n");
        if text.len() + line.len() > MAX_FILE {
            skipped.push(format!("{name}: over NFD's {MAX_FILE}-byte file limit"));
        } else {
            text += &line;
            written += 1;
        }
    }
    Rendered {
        text,
        written,
        skipped,
    }
}

/// Writes `text` to `path` as NFD wants it: a dotfile beside it, then a
/// rename ([`crate::support::files::replace`]). Readable by everyone
/// (nfd-worker runs as its own user).
pub fn write(path: &Path, text: &str) -> std::io::Result<()> {
    crate::support::files::replace(path, text.as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::caps::sample::{cpu, doc, machine};
    use std::time::{Duration, UNIX_EPOCH};

    fn caps(arch: &str, accel: &str) -> Capabilities {
        let mut c = doc();
        c.arch = Some(arch.to_owned());
        c.accel = accel.to_owned();
        c.cpu_models = vec![
            cpu("Skylake-Server", Some(true), &[]),
            cpu("EPYC", Some(false), &["svm"]),
            cpu("Opteron_G1", None, &[]),
        ];
        c.machines = vec![machine("pc-q35-10.0", Some("q35"), false, 1)];
        c
    }

    #[test]
    fn defaults_are_version_per_arch_and_kvm_and_lists_add_only_what_is_there() {
        let (x86, micro, arm) = (
            caps("x86_64", "kvm"),
            caps("x86_64", "kvm"),
            caps("aarch64", "tcg"),
        );
        let mut old = micro.clone();
        if let Some(q) = old.qemu.as_mut() {
            q.version = "9.0.0".into();
        }
        let sources = [
            Source {
                name: "a-microvm",
                file_name: "qemu-system-x86_64-microvm",
                caps: &old,
            },
            Source {
                name: "qemu-system-x86_64",
                file_name: "qemu-system-x86_64",
                caps: &x86,
            },
            Source {
                name: "arm",
                file_name: "qemu-system-aarch64",
                caps: &arm,
            },
        ];
        let (l, skipped) = labels(&sources, Wanted::default());
        assert_eq!(
            l,
            [
                ("qcapsd.io/kvm".to_owned(), "true".to_owned()),
                ("qcapsd.io/aarch64.qemu-version".into(), "9.1.0".into()),
                ("qcapsd.io/x86_64.qemu-version".into(), "9.1.0".into()),
            ]
        );
        assert!(skipped.is_empty());
        let cpus = [
            "EPYC".to_owned(),
            "Skylake-Server".to_owned(),
            "Opteron_G1".to_owned(),
            "Nope".to_owned(),
        ];
        let machines = ["q35".to_owned(), "virt".to_owned()];
        let (l, _) = labels(
            &sources[1..2],
            Wanted {
                cpu_models: &cpus,
                machine_types: &machines,
            },
        );
        let names: Vec<&str> = l.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "qcapsd.io/kvm",
                "qcapsd.io/x86_64.qemu-version",
                "qcapsd.io/x86_64.cpu.Skylake-Server",
                "qcapsd.io/x86_64.machine.q35",
            ]
        );
        // No emulator under KVM: kvm=false.
        let (l, _) = labels(&sources[2..], Wanted::default());
        assert_eq!(l[0], ("qcapsd.io/kvm".to_owned(), "false".to_owned()));
    }

    #[test]
    fn what_breaks_the_rules_or_the_size_is_skipped_and_said() {
        let x86 = caps("x86_64", "kvm");
        let long = "a".repeat(60);
        let sources = [Source {
            name: "x",
            file_name: "x",
            caps: &x86,
        }];
        let mut c = x86.clone();
        c.cpu_models[0].name = long.clone();
        let sources_long = [Source {
            name: "x",
            file_name: "x",
            caps: &c,
        }];
        let cpus = [long.clone()];
        let (l, skipped) = labels(
            &sources_long,
            Wanted {
                cpu_models: &cpus,
                machine_types: &[],
            },
        );
        assert_eq!(l.len(), 2);
        assert!(skipped[0].contains("not a label name"), "{skipped:?}");
        let r = render(
            &sources,
            Wanted::default(),
            UNIX_EPOCH + Duration::from_secs(86_400),
        );
        assert!(
            r.text.contains("# +expiry-time=1970-01-02T00:00:00Z\n"),
            "{}",
            r.text
        );
        assert_eq!(r.written, 2);
    }
}
