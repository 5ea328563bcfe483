//! qcapsd keeps the capabilities of every QEMU emulator on a host probed,
//! cached, validated and available in microseconds, so that no caller pays
//! for an exec of QEMU to learn what it can do.
//!
//! # Layout
//!
//! - [`qemu`]: everything that knows QEMU — the exec sandbox
//!   ([`qemu::exec`], the only code that starts processes), the QMP client,
//!   pure reply parsers, the capabilities document, the probe, and the
//!   fingerprint that decides whether a probe is still valid.
//! - [`cache`]: a generic validated cache that knows nothing of QEMU
//!   (handler contract, single flight, backoff, atomic disk store).
//! - [`emulators`]: the QEMU handler of that cache — configured emulators,
//!   fingerprint as stamp, probe as new data, cache file format, responses
//!   rendered once per entry.
//! - [`config`]: YAML → validated `Config`; globs and default discovery.
//! - [`agent`]: the running agent's state (config, cache, metrics), start-up
//!   and reload.
//! - [`revalidate`]: timer, inotify and backoff wake-ups; re-checks every
//!   emulator and re-probes what changed.
//! - [`api`]: HTTP routes, JSON and error responses, ETag, limits, and the
//!   connection-serving loop for TCP and unix sockets.
//! - [`daemon`]: `qcapsd run` — listeners, signals, graceful shutdown.
//! - [`metrics`]: every Prometheus metric, registered in one place.
//! - [`client`]: `qcapsd query` — HTTP client and tables.
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
