//! Integration tests, one binary (ripgrep's layout): each module is one area
//! of behaviour; `common` hides the set-up.

// Tests and benchmarks run tools and binaries; the exec ban is for the
// agent (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod agent;
mod cache_dir;
mod api;
mod changes;
mod check;
mod common;
mod compare;
mod container;
mod deploy;
mod every_emulator;
mod faults;
mod golden;
mod layers;
mod nfd;
mod notify;
mod observability;
mod probe_faults;
mod probe_real;
mod probe_replay;
mod schema;
mod shim;
mod vms;
