//! The JSON bodies of the query API that are not the capabilities document
//! itself: one definition used by the server to write them, by the client
//! to read them, and by the OpenAPI description to describe them.

use crate::agent::{Agent, SystemFacts};
use crate::cache::State;
use crate::qemu::fingerprint::HostContext;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An emulator's state as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EmulatorState {
    /// Not probed yet.
    Pending,
    /// Its capabilities are current.
    Fresh,
    /// A probe is running.
    Probing,
    /// The last probe failed (or the binary cannot be examined).
    Failed,
    /// The binary is not there.
    Missing,
}

impl From<State> for EmulatorState {
    fn from(s: State) -> Self {
        match s {
            State::Pending => EmulatorState::Pending,
            State::Fresh => EmulatorState::Fresh,
            State::Probing => EmulatorState::Probing,
            State::Failed => EmulatorState::Failed,
            State::Missing => EmulatorState::Missing,
        }
    }
}

impl EmulatorState {
    pub fn as_str(self) -> &'static str {
        State::from(self).as_str()
    }
}

impl From<EmulatorState> for State {
    fn from(s: EmulatorState) -> Self {
        match s {
            EmulatorState::Pending => State::Pending,
            EmulatorState::Fresh => State::Fresh,
            EmulatorState::Probing => State::Probing,
            EmulatorState::Failed => State::Failed,
            EmulatorState::Missing => State::Missing,
        }
    }
}

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
    pub state: EmulatorState,
    /// When the capabilities served were probed (RFC 3339).
    pub probed_at: Option<String>,
    /// The capabilities served are the last good ones; a later probe
    /// failed.
    pub stale: bool,
    pub error: Option<String>,
    /// Consecutive failed probes.
    pub failures: u32,
}

/// `GET /v1/emulators/{name}/help`: QEMU's answer to a pure query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HelpAnswer {
    /// The name QEMU was run under (its messages start with it).
    pub argv0: String,
    /// The arguments, as asked.
    pub args: Vec<String>,
    /// What QEMU wrote to stdout, byte for byte, in base64.
    pub stdout: String,
    /// What QEMU wrote to stderr, byte for byte, in base64.
    pub stderr: String,
    /// QEMU's exit status.
    pub exit_code: i32,
    /// `memo` (replayed, no exec) or `recorded` (this request ran QEMU).
    pub source: String,
    /// How long the recording exec took.
    pub exec_seconds: f64,
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
    pub state: Option<EmulatorState>,
}

/// The answer to `POST /v1/emulators/{name}/revalidate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Revalidating {
    /// The emulator.
    pub name: String,
    /// Its state right after (`probing` unless it is missing).
    pub state: EmulatorState,
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

/// Every emulator as `GET /v1/emulators` lists it, sorted by name. Reads
/// memory only (no stat): the state as of the last lookup or pass.
pub fn rows(agent: &Agent) -> Vec<EmulatorRow> {
    let view = agent.cache.handler().view();
    agent
        .cache
        .statuses()
        .into_iter()
        .map(|s| {
            let caps = s.data.as_deref().map(|d| &d.caps);
            EmulatorRow {
                path: view
                    .table
                    .get(&s.key)
                    .map(|t| t.path.display().to_string())
                    .unwrap_or_default(),
                arch: caps.and_then(|c| c.arch.clone()),
                version: caps.and_then(|c| c.qemu.as_ref().map(|q| q.version.clone())),
                state: s.state.into(),
                probed_at: caps.map(|c| c.probe.started_at.clone()),
                stale: s.stale,
                error: s.error.map(|e| e.to_string()),
                failures: s.failures,
                name: s.key,
            }
        })
        .collect()
}

/// `GET /v1/host`: the fingerprint's host facts (from the snapshot the
/// revalidator keeps), where each was read, and the agent's own machine.
pub fn host_doc(agent: &Agent) -> HostDoc {
    let handler = agent.cache.handler();
    let host = handler.host();
    HostDoc {
        host_root: host.root().display().to_string(),
        facts: (*handler.view().host).clone(),
        kvm: KvmDoc {
            device: host.path("/dev/kvm").display().to_string(),
            usable: host.kvm_usable(),
        },
        sources: host.sources(),
        system: agent.system().clone(),
    }
}
