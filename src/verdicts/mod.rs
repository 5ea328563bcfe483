//! What the cache's answers mean, as pure functions of capabilities
//! documents: what changed between two of them ([`changes`]), whether a
//! VM can run on one ([`check`]), and what several hosts share
//! ([`compare`]). No I/O, no exec.

pub mod changes;
pub mod check;
pub mod compare;
pub mod vms;
