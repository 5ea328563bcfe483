//! Integration tests, one binary (ripgrep's layout): each module is one area
//! of behaviour; `common` hides the set-up.

mod agent;
mod api;
mod common;
mod deploy;
mod observability;
mod probe_faults;
mod probe_real;
mod probe_replay;
