//! Small leaf helpers with no knowledge of QEMU or the agent: a content
//! hash that is stable across builds, and RFC 3339 timestamps.

pub mod digest;
pub mod timefmt;
