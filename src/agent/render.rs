//! HTTP response bodies of one cache entry, serialized once: the full
//! document (with cache metadata), each of its parts, and one body per
//! device, each with a content-hash ETag. An entry is immutable, so its
//! responses are rendered when it is made (a probe or a load), never per
//! request: the full document is 150–250 KB.

use crate::qemu::caps::{Capabilities, DeviceProperty};
use crate::qemu::fingerprint::Fingerprint;
use crate::support::digest::fnv64;
use bytes::Bytes;
use serde::Serialize;
use std::collections::HashMap;

/// One serialized response and its ETag: bytes, shared by every response
/// that sends them (a clone is a reference count).
#[derive(Debug, Clone)]
pub struct Part {
    pub body: Bytes,
    /// The ETag (hex digits, a dash and quotes).
    pub etag: Bytes,
}

impl Part {
    pub fn json(value: &impl Serialize) -> Result<Part, serde_json::Error> {
        let body = Bytes::from(serde_json::to_vec(value)?);
        Ok(Part {
            etag: Bytes::from(etag(&body)),
            body,
        })
    }

    /// The ETag as text.
    pub fn etag_str(&self) -> &str {
        std::str::from_utf8(&self.etag).unwrap_or("")
    }
}

/// A strong ETag of the content: FNV-1a 64 and the length. The same bytes
/// get the same tag from every build of the agent, so a client's tag stays
/// good across agent upgrades.
pub fn etag(body: &[u8]) -> String {
    format!("\"{:016x}-{:x}\"", fnv64(body), body.len())
}

/// The body of `/v1/emulators/{name}/devices/{device}`.
#[derive(Debug, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct DeviceDoc {
    pub name: String,
    /// `null` when the device's properties were not among those read
    /// (`device_properties` in the config).
    pub properties: Option<Vec<DeviceProperty>>,
}

#[derive(Serialize)]
struct DeviceDocRef<'a> {
    name: &'a str,
    properties: Option<&'a [DeviceProperty]>,
}

/// Cache metadata added to the full document.
#[derive(Debug, Clone, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct CacheMeta {
    /// What the entry is valid for.
    pub fingerprint: Fingerprint,
    /// Wall time of the exec that produced the entry: what each hit saves.
    pub exec_seconds: f64,
}

#[derive(Serialize)]
struct FullDocRef<'a> {
    #[serde(flatten)]
    caps: &'a Capabilities,
    cache: CacheMetaRef<'a>,
}

#[derive(Serialize)]
struct CacheMetaRef<'a> {
    fingerprint: &'a Fingerprint,
    exec_seconds: f64,
}

/// The responses of one entry, serialized once.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub full: Part,
    pub machines: Part,
    pub cpu_models: Part,
    pub devices: Part,
    pub commands: Part,
    /// `/devices/{device}` for every device the emulator has.
    pub device: HashMap<String, Part>,
}

impl Rendered {
    pub fn new(
        caps: &Capabilities,
        fingerprint: &Fingerprint,
        exec_seconds: f64,
    ) -> Result<Rendered, serde_json::Error> {
        let device = caps
            .devices
            .iter()
            .map(|d| {
                let doc = DeviceDocRef {
                    name: d,
                    properties: caps.device_properties.get(d).map(Vec::as_slice),
                };
                Ok((d.clone(), Part::json(&doc)?))
            })
            .collect::<Result<HashMap<_, _>, serde_json::Error>>()?;
        Ok(Rendered {
            full: Part::json(&FullDocRef {
                caps,
                cache: CacheMetaRef {
                    fingerprint,
                    exec_seconds,
                },
            })?,
            machines: Part::json(&caps.machines)?,
            cpu_models: Part::json(&caps.cpu_models)?,
            devices: Part::json(&caps.devices)?,
            commands: Part::json(&caps.commands)?,
            device,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_stable_across_builds() {
        // A fixed tag for fixed bytes: if this changes, every client's
        // cached ETag breaks on upgrade.
        assert_eq!(etag(b"[]"), "\"09612b07b5ecb5a5-2\"");
        assert_ne!(etag(b"[1]"), etag(b"[2]"));
    }
}
