//! qcapsd keeps the capabilities of every QEMU emulator on a host probed,
//! cached, validated and available in microseconds, so that no caller pays
//! for an exec of QEMU to learn what it can do.
//!
//! # Layout
//!
//! Folders are layers, listed bottom up; each uses only those above it in
//! this list.
//!
//! - [`support`]: leaf helpers — a content hash stable across builds
//!   (ETags, checksums), RFC 3339 timestamps, base64, the shim directory's
//!   layout, node-feature-discovery's label rules.
//! - [`qemu`]: everything that knows QEMU — the exec sandbox
//!   ([`qemu::exec`], the only code that starts processes) and what its
//!   execs come to, the reaper, the QMP client, pure reply parsers, the
//!   capabilities document, the probe, `verify` (a VM started once,
//!   stopped), the fingerprint that decides whether a probe is still
//!   valid, and pure readers of command lines (pure queries, a running
//!   VM's).
//! - [`cache`]: a generic validated cache that knows nothing of QEMU:
//!   handler contract, the slot and its one decision, the flight, the
//!   atomic disk store.
//! - [`config`]: YAML → validated `Config`, with every default.
//! - [`verdicts`]: what documents mean, as pure functions — what changed
//!   ([`verdicts::changes`]), can a VM run ([`verdicts::check`]), what
//!   hosts share ([`verdicts::compare`]), would the running VMs start
//!   again ([`verdicts::vms`]).
//! - [`agent`]: the running agent, a coordinator — its state, the QEMU
//!   handler of the cache ([`agent::emulators`]), discovery, rendered
//!   responses, the change history, long-poll versions, metrics, the
//!   revalidator, the memos (pure queries, verifications), and the
//!   features its passes drive ([`agent::pass`]): gauges, the shim
//!   directory, node labels ([`agent::nfd`]), the running VMs
//!   ([`agent::vms`]).
//! - [`api`]: HTTP — the route table ([`api::routes`]), handlers,
//!   responses, long-polls, the connection loop and its limits, the
//!   bodies, OpenAPI, and the client the CLI uses.
//! - [`daemon`]: `qcapsd run` — cache lock, listeners, signals, shutdown,
//!   the lifecycle told to systemd.
//! - [`shim`]: the binary run under an emulator's name — pure queries
//!   answered by the agent, everything else QEMU in place.
//! - [`cli`]: the command line, defined once (binary and man page).
//!
//! `unsafe` is denied everywhere; one function in [`qemu::exec`] (the
//! parent-death signal set between fork and exec) is allowed it.

#![deny(unsafe_code)]

pub mod support;
pub mod qemu;
pub mod cache;
pub mod config;
pub mod verdicts;
pub mod agent;
pub mod api;
pub mod daemon;
pub mod shim;
pub mod cli;
