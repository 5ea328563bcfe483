//! qcapsd keeps the capabilities of every QEMU emulator on a host probed,
//! cached, validated and available in microseconds, so that no caller pays
//! for an exec of QEMU to learn what it can do.
//!
//! # Layout
//!
//! - [`qemu`]: everything that knows QEMU — the exec sandbox (the only code
//!   that starts processes), the QMP client, pure reply parsers, the
//!   capabilities document and the probe that ties them together.
//! - [`timefmt`]: RFC 3339 timestamps.

#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod cache;
pub mod client;
pub mod config;
pub mod daemon;
pub mod emulators;
pub mod metrics;
pub mod qemu;
pub mod revalidate;
pub mod timefmt;
