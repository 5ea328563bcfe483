//! The JSON bodies of the query API that are not the capabilities document
//! itself: one definition used by the server to write them, by the client
//! to read them, and by the OpenAPI description to describe them.

use crate::cache::State;
use crate::qemu::fingerprint::HostContext;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One emulator in `GET /v1/emulators`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmulatorRow {
    /// The configured name (the key in every URL).
    pub name: String,
    /// The binary's path as configured.
    pub path: String,
    /// The guest architecture, from the last successful probe.
    pub arch: Option<String>,
    /// QEMU's version, from the last successful probe.
    pub version: Option<String>,
    /// `pending` (not probed yet), `fresh`, `probing`, `failed` or
    /// `missing`.
    pub state: State,
    /// When the capabilities served were probed (RFC 3339).
    pub probed_at: Option<String>,
    /// The capabilities served are the last good ones; a later probe
    /// failed.
    pub stale: bool,
    pub error: Option<String>,
    /// Consecutive failed probes.
    pub failures: u32,
}

/// Every error answer: `{"error": "...", "status": N}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// What went wrong, in one line.
    pub error: String,
    /// The HTTP status code, again.
    pub status: u16,
    /// The emulator's state, where the error is about one (e.g. a forced
    /// probe refused by the rate limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
}

/// The answer to `POST /v1/emulators/{name}/revalidate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Revalidating {
    /// The emulator.
    pub name: String,
    /// Its state right after (`probing` unless it is missing).
    pub state: State,
}

/// `GET /healthz` and `GET /readyz` when healthy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    /// `ok` (`/healthz`) or `ready` (`/readyz`).
    pub status: String,
}

/// `GET /v1/host`: the host facts the fingerprint uses, read below
/// `host_root`, and facts about the machine the agent runs on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HostDoc {
    /// The root below which the fingerprint's facts are read.
    pub host_root: String,
    /// The facts, as the revalidator last read them.
    #[serde(flatten)]
    pub facts: HostContext,
    /// Whether probes can use KVM.
    pub kvm: KvmDoc,
    /// Where each fingerprint fact above was read (paths below
    /// `host_root`).
    pub sources: BTreeMap<String, String>,
    /// The machine the agent itself runs on, as its own `/proc` shows it
    /// (not below `host_root`); not part of any fingerprint.
    pub system: SystemFacts,
}

/// `/dev/kvm` as the agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KvmDoc {
    /// The device node, below `host_root`.
    pub device: String,
    /// Whether the agent (and so every probe) may open it read-write.
    pub usable: bool,
}

/// CPU brand and count, memory and host name, read once at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SystemFacts {
    /// The host name.
    pub hostname: Option<String>,
    /// The first CPU's brand string.
    pub cpu_brand: Option<String>,
    /// Logical CPUs.
    pub cpus: usize,
    /// Total memory.
    pub memory_bytes: u64,
}

impl SystemFacts {
    pub fn read() -> SystemFacts {
        use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
        let sys = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        SystemFacts {
            hostname: System::host_name(),
            cpu_brand: sys
                .cpus()
                .first()
                .map(|c| c.brand().trim().to_owned())
                .filter(|b| !b.is_empty()),
            cpus: sys.cpus().len(),
            memory_bytes: sys.total_memory(),
        }
    }
}
