//! Every system emulator Debian ships (30, from bookworm-backports), as a
//! new user would meet them: one agent with the default accelerators over
//! all of them. Machines, CPU models and devices equal what QEMU's own help
//! texts list, and `check` is held to QEMU starting the VM it was asked
//! about: a default machine with each CPU model (up to 25 per emulator).

use crate::common::{self, Http, InProcess};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One emulator as the agent serves it, with its binary.
struct Probed {
    name: String,
    bin: PathBuf,
    doc: Value,
}

/// An agent over every emulator, and what it serves of each. An emulator
/// the agent could not probe is one QEMU itself cannot start here
/// (qemu-system-x86_64-microvm runs under KVM only): asserted, then left out.
fn agent_over_every_emulator(dir: &Path) -> (InProcess, Vec<Probed>) {
    let bins = common::every_emulator();
    let mut yaml = String::from("accels: [kvm, tcg]\nemulators:\n");
    for b in &bins {
        yaml += &format!("  - path: {}\n", b.display());
    }
    let agent = InProcess::start(dir, &yaml);
    let mut probed = Vec::new();
    for bin in bins {
        let name = bin.file_name().unwrap().to_string_lossy().into_owned();
        let r = agent.get(&format!("/v1/emulators/{name}"));
        if r.status == 200 {
            probed.push(Probed {
                name,
                bin,
                doc: r.json(),
            });
            continue;
        }
        let why = r.text();
        assert!(
            !common::kvm_usable() && name.ends_with("-microvm"),
            "{name} was not probed: {why}"
        );
        let started = common::qemu_starts(
            &bin,
            &strings(&["-S", "-display", "none", "-machine", "none,accel=tcg"]),
        );
        assert!(started.is_err(), "{name} starts under TCG, yet: {why}");
    }
    (agent, probed)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn names(v: &Value, key: &str) -> Vec<String> {
    let mut out: Vec<String> = v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| match e {
            Value::String(s) => s.clone(),
            e => e["name"].as_str().unwrap().to_owned(),
        })
        .collect();
    out.sort();
    out
}

/// Issue 17: half of QEMU's targets have no `query-cpu-definitions`; their
/// models come from the CPU types, named as `-cpu help` names them.
#[test]
#[ignore = "needs QEMU (all 30 emulators)"]
fn machines_cpu_models_and_devices_equal_qemu_s_own_lists_on_every_emulator() {
    let d = tempfile::tempdir().unwrap();
    let (_agent, probed) = agent_over_every_emulator(d.path());
    assert!(probed.len() >= common::DEBIAN_EMULATORS.len() - 1);
    for p in &probed {
        let mut machines = names(&p.doc, "machines");
        for m in p.doc["machines"].as_array().unwrap() {
            if let Some(a) = m["alias"].as_str() {
                machines.push(a.to_owned());
            }
        }
        machines.sort();
        machines.dedup();
        assert_eq!(
            machines,
            common::machine_help_names(&p.bin),
            "{}: machines",
            p.name
        );
        let cpus = names(&p.doc, "cpu_models");
        assert!(!cpus.is_empty(), "{}: no CPU model", p.name);
        assert_eq!(
            cpus,
            common::cpu_help_names(&p.bin),
            "{}: CPU models",
            p.name
        );
        assert_eq!(
            names(&p.doc, "devices"),
            common::device_help_names(&p.bin),
            "{}: devices",
            p.name
        );
        // Where QEMU has no query-cpu-definitions, it does not say which
        // models are usable: unknown, never invented.
        if !p.doc["commands"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "query-cpu-definitions")
        {
            for m in p.doc["cpu_models"].as_array().unwrap() {
                assert!(m["usable"].is_null(), "{}: {m}", p.name);
                assert!(m["typename"].is_string(), "{}: {m}", p.name);
            }
        }
    }
}

/// Up to `n` of `items`, picked by a fixed seed (the same sample every
/// run), in their order.
fn sample<T: Clone>(items: &[T], n: usize, seed: u64) -> Vec<T> {
    if items.len() <= n {
        return items.to_vec();
    }
    let mut state = seed | 1;
    let mut keys: Vec<(u64, usize)> = (0..items.len())
        .map(|i| {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d), i)
        })
        .collect();
    keys.sort();
    let mut picked: Vec<usize> = keys[..n].iter().map(|&(_, i)| i).collect();
    picked.sort();
    picked.into_iter().map(|i| items[i].clone()).collect()
}

/// The machine a VM of this emulator gets: QEMU's default, else `virt`
/// (arm, aarch64 and loongarch have no default; `virt` is what their VMs
/// use), else the first.
fn machine_of(doc: &Value) -> String {
    let machines = doc["machines"].as_array().unwrap();
    machines
        .iter()
        .find(|m| m["is_default"] == true)
        .or_else(|| {
            machines
                .iter()
                .find(|m| m["name"] == "virt" || m["alias"] == "virt")
        })
        .or(machines.first())
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .unwrap()
}

/// Whether QEMU's complaint is its refusal of the CPU model or the
/// machine (not, say, a machine that needs a kernel image to start).
fn refuses_cpu_or_machine(stderr: &str, cpu: &str) -> bool {
    let s = stderr.to_lowercase();
    s.contains("cpu") || s.contains("machine") || s.contains("bus model") || stderr.contains(cpu)
}

/// The host fault of nested KVM some machines have (see check.rs).
fn nested_kvm_msr_fault(stderr: &str) -> bool {
    stderr.contains("kvm_buf_set_msrs")
}

/// Issue 17: `check` against QEMU itself on every emulator. A NO is always
/// QEMU's refusal (check never says no to a VM QEMU runs); a yes without a
/// warning about the model is QEMU starting it (or failing for another
/// reason: a machine that needs a kernel). Where QEMU does not report
/// usability, check says yes with a warning that QEMU may still refuse the
/// model (a machine may take only some): those refusals are counted, and
/// are the only ones allowed.
#[test]
#[ignore = "needs QEMU (all 30 emulators)"]
fn check_verdicts_match_qemu_starting_each_cpu_model_on_every_emulator() {
    let d = tempfile::tempdir().unwrap();
    let (agent, probed) = agent_over_every_emulator(d.path());
    // (emulator, machine, cpu, accel, verdict, QEMU's args)
    let mut cases: Vec<(String, String, String, Value, PathBuf, Vec<String>)> = Vec::new();
    for (k, p) in probed.iter().enumerate() {
        let machine = machine_of(&p.doc);
        let accel = p.doc["accel"].as_str().unwrap().to_owned();
        let models = names(&p.doc, "cpu_models");
        for cpu in sample(&models, 25, 0x5eed + k as u64) {
            let r = agent.get(&format!(
                "/v1/check?emulator={}&machine={machine}&cpu={}",
                p.name,
                qcapsd::api::client::percent_encode(&cpu)
            ));
            assert_eq!(r.status, 200, "{}: {}", p.name, r.text());
            // x86 drops features it cannot give unless told to enforce
            // them: `enforce` makes QEMU refuse what check calls unusable.
            let x86 = p.doc["arch"] == "x86_64" || p.doc["arch"] == "i386";
            let cpu_arg = if x86 {
                format!("{cpu},enforce")
            } else {
                cpu.clone()
            };
            let args = strings(&[
                "-nodefaults",
                "-no-user-config",
                "-machine",
                &format!("{machine},accel={accel}"),
                "-cpu",
                &cpu_arg,
                "-S",
                "-display",
                "none",
            ]);
            cases.push((
                p.name.clone(),
                machine.clone(),
                cpu,
                r.json(),
                p.bin.clone(),
                args,
            ));
        }
    }
    assert!(cases.len() >= 300, "{} combinations", cases.len());
    let started = common::two_at_a_time(&cases, |(_, _, _, _, bin, args)| {
        common::qemu_starts(bin, args)
    });
    // Issue 22: the same questions with verify=true, where QEMU runs
    // under TCG (KVM here is nested, with faults of its own): QEMU's word
    // through the agent is QEMU's word.
    let verified = common::two_at_a_time(&cases, |(emu, machine, cpu, v, _, _)| {
        (v["accel"] == "tcg").then(|| {
            agent
                .get(&format!(
                    "/v1/check?emulator={emu}&machine={machine}&cpu={}&verify=true",
                    qcapsd::api::client::percent_encode(cpu)
                ))
                .json()
        })
    });
    let mut disagree = Vec::new();
    let mut confirmed = 0;
    for ((emu, machine, cpu, _, _, _), (qemu, v)) in cases.iter().zip(started.iter().zip(&verified))
    {
        let Some(v) = v else { continue };
        let what = format!("{emu} -machine {machine} -cpu {cpu}");
        if v["verified"] != true || v["ok"].as_bool() != Some(qemu.is_ok()) {
            disagree.push(format!("{what}: QEMU {qemu:?}, verified verdict {v}"));
        } else {
            confirmed += 1;
        }
    }
    assert!(
        disagree.is_empty(),
        "{} verified verdicts disagree with QEMU:\n  {}",
        disagree.len(),
        disagree.join("\n  ")
    );
    assert!(confirmed >= 300, "{confirmed} TCG combinations verified");
    eprintln!("{confirmed} TCG-only combinations: each verified verdict is QEMU's own");
    let (mut mismatches, mut hedged, mut other) = (Vec::new(), Vec::new(), Vec::new());
    let (mut yes, mut no) = (0, 0);
    for ((emu, machine, cpu, v, _, _), qemu) in cases.iter().zip(&started) {
        let ok = v["ok"].as_bool().unwrap();
        let warned = v["warnings"].as_array().unwrap().iter().any(|w| {
            w.as_str()
                .unwrap()
                .contains(&format!("whether cpu {cpu} is usable"))
        });
        let what = format!("{emu} -machine {machine} -cpu {cpu}");
        match (ok, qemu) {
            (true, Ok(())) => yes += 1,
            (false, Err(e)) if refuses_cpu_or_machine(e, cpu) => no += 1,
            (false, _) => mismatches.push(format!(
                "check said no ({}), QEMU {}: {what}",
                v["problems"],
                qemu.as_ref()
                    .map_or_else(|e| format!("failed otherwise: {e}"), |()| "started".into())
            )),
            (true, Err(e)) if nested_kvm_msr_fault(e) => other.push(format!("{what}: {e}")),
            (true, Err(e)) if !refuses_cpu_or_machine(e, cpu) => other.push(format!("{what}: {e}")),
            (true, Err(e)) if warned => {
                hedged.push(format!("{what}: {}", e.lines().last().unwrap_or("")))
            }
            (true, Err(e)) => mismatches.push(format!(
                "check said yes without a warning, QEMU refused {what}: {e}"
            )),
        }
    }
    eprintln!(
        "{} combinations: {yes} yes and started, {no} no and refused; {} yes-with-a-warning refused by QEMU; {} failed for other reasons",
        cases.len(),
        hedged.len(),
        other.len()
    );
    for h in other.iter().chain(&hedged).take(40) {
        eprintln!("  {h}");
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} verdicts disagree with QEMU:\n  {}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n  ")
    );
    assert!(yes >= 100, "{yes} VMs checked yes and started");
}
