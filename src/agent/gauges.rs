//! The per-emulator gauges of `/metrics` (`qcapsd_emulator_info`,
//! `qcapsd_emulator_up`, `qcapsd_capabilities`), rebuilt from the cache's
//! statuses at each scrape: memory only, no pass work.

use super::metrics::{CapabilityPart, Metrics};
use super::pass::{Feature, Snapshot};
use crate::cache::State;
use std::sync::Arc;

pub struct Gauges {
    metrics: Arc<Metrics>,
}

impl Gauges {
    pub fn new(metrics: Arc<Metrics>) -> Gauges {
        Gauges { metrics }
    }
}

impl Feature for Gauges {
    fn name(&self) -> &'static str {
        "gauges"
    }

    fn on_scrape(&self, snap: &Snapshot) {
        let m = &self.metrics;
        m.emulator_info.reset();
        for st in &snap.statuses {
            let caps = st.data.as_deref().map(|d| &d.caps);
            if let Some(caps) = caps {
                for &part in CapabilityPart::ALL {
                    m.capabilities
                        .with_label_values(&[&st.key, part.as_str()])
                        .set(part.count(caps) as i64);
                }
            }
            let path = snap
                .view
                .table
                .get(&st.key)
                .map(|t| t.path.display().to_string())
                .unwrap_or_default();
            let version = caps
                .and_then(|c| c.qemu.as_ref())
                .map(|q| q.version.as_str());
            m.emulator_info
                .with_label_values(&[
                    st.key.as_str(),
                    &path,
                    caps.and_then(|c| c.arch.as_deref()).unwrap_or(""),
                    version.unwrap_or(""),
                ])
                .set(1);
            let up = st.state == State::Fresh || (st.state == State::Probing && version.is_some());
            m.emulator_up
                .with_label_values(&[&st.key])
                .set(i64::from(up));
        }
    }
}
