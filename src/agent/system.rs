//! The machine the agent itself runs on (not below `host_root`): read
//! once at start, shown by `GET /v1/host`.

/// CPU brand and count, memory and host name, read once at start: the
/// machine the agent itself runs on (not below `host_root`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
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
