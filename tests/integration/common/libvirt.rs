//! A small reader for libvirt's capabilities XML (the oracle the probe is
//! compared with).

use std::collections::BTreeMap;

/// One XML element's attributes.
pub type Attrs = BTreeMap<String, String>;

/// The parts of libvirt's `<qemuCaps>` XML the probe is compared with.
#[derive(Debug, Default)]
pub struct LibvirtCaps {
    pub version: u64,
    pub arch: String,
    /// `<machine>` elements.
    pub machines: Vec<Attrs>,
    /// `<cpu>` elements with the names of their `<blocker>` children.
    pub cpus: Vec<(Attrs, Vec<String>)>,
}

/// Reads libvirt's capabilities XML. The format is regular (one element per
/// tag, single-quoted attributes), so a tag scanner is enough.
pub fn parse_libvirt_xml(text: &str) -> LibvirtCaps {
    let mut caps = LibvirtCaps::default();
    let mut rest = text;
    let mut in_cpu = false;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let end = after.find('>').expect("unterminated tag");
        let tag = &after[..end];
        let body_after = &after[end + 1..];
        let (name, attrs_text) = tag.split_once(char::is_whitespace).unwrap_or((tag, ""));
        let self_closing = tag.ends_with('/');
        let name = name.trim_end_matches('/');
        match name {
            "version" => {
                let close = body_after.find('<').unwrap();
                caps.version = body_after[..close].trim().parse().unwrap();
            }
            "arch" if caps.arch.is_empty() => {
                let close = body_after.find('<').unwrap();
                caps.arch = body_after[..close].trim().to_owned();
            }
            "machine" => caps.machines.push(attributes(attrs_text)),
            "cpu" => {
                caps.cpus.push((attributes(attrs_text), Vec::new()));
                in_cpu = !self_closing;
            }
            "/cpu" => in_cpu = false,
            "blocker" if in_cpu => {
                let a = attributes(attrs_text);
                caps.cpus.last_mut().unwrap().1.push(a["name"].clone());
            }
            _ => {}
        }
        rest = body_after;
    }
    caps
}

fn attributes(text: &str) -> Attrs {
    let mut out = Attrs::new();
    let mut rest = text.trim().trim_end_matches('/');
    while let Some(eq) = rest.find("='") {
        let key = rest[..eq].trim().to_owned();
        let val_start = eq + 2;
        let val_end = val_start
            + rest[val_start..]
                .find('\'')
                .expect("unterminated attribute");
        out.insert(key, unescape(&rest[val_start..val_end]));
        rest = &rest[val_end + 1..];
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&apos;", "'")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// A CPU model, its usability and its sorted blockers.
pub type CpuKey = (String, Option<bool>, Vec<String>);

/// libvirt's `<cpu type=typ>` entries as QEMU names them.
pub fn libvirt_cpus(x: &LibvirtCaps, typ: &str) -> std::collections::BTreeSet<CpuKey> {
    x.cpus
        .iter()
        .filter(|(a, _)| a["type"] == typ)
        .map(|(a, blockers)| {
            let mut b = blockers.clone();
            b.sort();
            let usable = a.get("usable").map(|u| u == "yes");
            (qemu_cpu_name(&x.arch, &a["name"]), usable, b)
        })
        .collect()
}

/// libvirt renames ppc64's `powerN` models to `POWERN` for backward
/// compatibility; qcapsd reports QEMU's own names.
pub fn qemu_cpu_name(arch: &str, libvirt_name: &str) -> String {
    let is_power_n = libvirt_name
        .strip_prefix("POWER")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if arch.starts_with("ppc64") && is_power_n {
        libvirt_name.to_ascii_lowercase()
    } else {
        libvirt_name.to_owned()
    }
}
