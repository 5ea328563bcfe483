//! qcapsd keeps the capabilities of every QEMU emulator on a host probed,
//! cached, validated and available in microseconds, so that no caller pays
//! for an exec of QEMU to learn what it can do.
//!
//! # Layout
//!
//! Each layer uses only those below it.
//!
//! - [`qemu`]: everything that knows QEMU — the exec sandbox
//!   ([`qemu::exec`], the only code that starts processes), the QMP client,
//!   pure reply parsers, the capabilities document, the probe, and the
//!   fingerprint that decides whether a probe is still valid.
//! - [`cache`]: a generic validated cache that knows nothing of QEMU:
//!   handler contract, the slot and its one decision, the flight, the
//!   atomic disk store.
//! - [`digest`]: a content hash stable across builds (ETags, checksums).
//! - [`config`]: YAML → validated `Config`, with every default.
//! - [`discovery`]: the config's emulators resolved against the file
//!   system (paths, globs, default discovery) into unique names.
//! - [`render`]: an entry's HTTP bodies and ETags, serialized once.
//! - [`changes`]: what changed between two documents (a pure diff), the
//!   change record and its kinds.
//! - [`history`]: the last changes of each emulator, kept on disk.
//! - [`watch`]: the versions long-polls wait on.
//! - [`emulators`]: the QEMU handler of the cache — configured emulators,
//!   fingerprint as stamp, probe as new data, the checksummed file format.
//! - [`metrics`]: every Prometheus metric, registered in one place.
//! - [`model`]: the API's other bodies, shared by server and client.
//! - [`agent`]: the running agent's state (config, cache, metrics),
//!   start-up, reload, the emulator rows.
//! - [`revalidate`]: timer, inotify and backoff wake-ups; re-checks every
//!   emulator and re-probes what changed.
//! - [`api`]: HTTP routes, JSON and error responses, ETag; [`api::serve`]
//!   the connection loop and its limits for TCP and unix sockets.
//! - [`daemon`]: `qcapsd run` — cache lock, listeners, signals, shutdown.
//! - [`notify`]: the lifecycle told to systemd (`Type=notify`, watchdog).
//! - [`client`]: `qcapsd query` — HTTP client and tables.
//! - [`cli`]: the command line, defined once (binary and man page).
//! - [`timefmt`]: RFC 3339 timestamps.
//!
//! `unsafe` is denied everywhere; one function in [`qemu::exec`] (the
//! parent-death signal set between fork and exec) is allowed it.

#![deny(unsafe_code)]

pub mod agent;
pub mod api;
pub mod cache;
pub mod changes;
pub mod check;
pub mod cli;
pub mod client;
pub mod compare;
pub mod config;
pub mod daemon;
pub mod digest;
pub mod discovery;
pub mod emulators;
pub mod history;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod openapi;
pub mod qemu;
pub mod render;
pub mod revalidate;
pub mod timefmt;
pub mod watch;
