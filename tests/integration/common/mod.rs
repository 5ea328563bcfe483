//! Helpers shared by the integration tests, one concern per module.

#![allow(dead_code, unused_imports)]

pub mod agent_proc;
pub mod data;
pub mod http;
pub mod in_process;
pub mod libvirt;
pub mod poll;
pub mod procs;
pub mod prometheus;
pub mod stand_ins;

pub use agent_proc::AgentProc;
pub use data::*;
pub use http::*;
pub use in_process::InProcess;
pub use libvirt::*;
pub use poll::poll_until;
pub use procs::*;
pub use prometheus::Prometheus;
pub use stand_ins::*;
