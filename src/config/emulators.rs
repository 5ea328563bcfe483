//! The `emulators:` key: explicit paths (with an optional name) and globs.
//! Names, given or derived from a path's file name, are checked as the list
//! is read, so a bad or duplicate one is reported at its own entry.
//! Resolving the list against the file system is [`super::discovery`]'s
//! job.

use super::values::{AbsPath, GlobPattern};
use crate::cache::store::is_plain_key;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

/// One `emulators:` entry: a `path` (with an optional `name`) or a `glob`.
#[derive(Debug, Clone, PartialEq)]
pub enum EmulatorEntry {
    Path { path: PathBuf, name: String },
    Glob(GlobPattern),
}

/// The `emulators:` list. Names (given, or derived from a path's file
/// name) are checked as the list is read, so a bad or duplicate name is
/// reported at its own entry.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EmulatorList(pub Vec<EmulatorEntry>);

/// The rule for emulator names (they are file names, URL segments and
/// metric labels).
pub fn name_problem(name: &str) -> Option<String> {
    (!is_plain_key(name)).then(|| {
        format!(
            "name '{}' must be 1-64 characters of letters, digits, '.', '_' or '-', not starting with '.'",
            name.escape_debug()
        )
    })
}

impl<'de> Deserialize<'de> for EmulatorList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = EmulatorList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of {path, name} or {glob} entries")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EmulatorList, A::Error> {
                let mut seen = BTreeSet::new();
                let mut out = Vec::new();
                while let Some(e) = seq.next_element_seed(EntrySeed { seen: &mut seen })? {
                    out.push(e);
                }
                Ok(EmulatorList(out))
            }
        }
        d.deserialize_seq(ListVisitor)
    }
}

/// Reads one entry, checking its name against the names seen so far.
struct EntrySeed<'a> {
    seen: &'a mut BTreeSet<String>,
}

impl<'de> DeserializeSeed<'de> for EntrySeed<'_> {
    type Value = EmulatorEntry;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<EmulatorEntry, D::Error> {
        d.deserialize_struct("entry", &["path", "name", "glob"], self)
    }
}

impl<'de> Visitor<'de> for EntrySeed<'_> {
    type Value = EmulatorEntry;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an entry with 'path' (and 'name') or 'glob'")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EmulatorEntry, A::Error> {
        let (mut path, mut name, mut glob): (Option<AbsPath>, Option<String>, Option<GlobPattern>) =
            (None, None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "path" if path.is_none() => path = Some(map.next_value()?),
                "glob" if glob.is_none() => glob = Some(map.next_value()?),
                // The name is checked as it is read, so the error names
                // its line.
                "name" if name.is_none() => {
                    name = Some(map.next_value_seed(NameSeed { seen: &*self.seen })?)
                }
                "path" | "glob" | "name" => {
                    return Err(de::Error::custom(format!("duplicate field `{key}`")));
                }
                other => {
                    return Err(de::Error::unknown_field(other, &["path", "name", "glob"]));
                }
            }
        }
        match (path, glob, name) {
            (Some(p), None, name) => {
                let name = match name {
                    Some(n) => n,
                    None => {
                        let derived = p
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        if let Some(problem) = name_problem(&derived) {
                            return Err(de::Error::custom(format!(
                                "the file name of {} is not a usable name ({problem}): add `name:` to this entry",
                                p.display()
                            )));
                        }
                        if self.seen.contains(&derived) {
                            return Err(de::Error::custom(format!(
                                "duplicate name '{derived}' (from the file name of {}): add `name:` to this entry",
                                p.display()
                            )));
                        }
                        derived
                    }
                };
                self.seen.insert(name.clone());
                Ok(EmulatorEntry::Path { path: p.0, name })
            }
            (None, Some(g), None) => Ok(EmulatorEntry::Glob(g)),
            (None, Some(_), Some(_)) => Err(de::Error::custom(
                "'name' goes with 'path', not 'glob' (a glob's emulators are named by file name)",
            )),
            (Some(_), Some(_), _) => Err(de::Error::custom(
                "an entry has either 'path' or 'glob', not both",
            )),
            (None, None, _) => Err(de::Error::custom("an entry needs 'path' or 'glob'")),
        }
    }
}

/// Reads a `name:` value: valid and not seen before.
struct NameSeed<'a> {
    seen: &'a BTreeSet<String>,
}

impl<'de> DeserializeSeed<'de> for NameSeed<'_> {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for NameSeed<'_> {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an emulator name")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
        if let Some(problem) = name_problem(s) {
            return Err(E::custom(problem));
        }
        if self.seen.contains(s) {
            return Err(E::custom(format!("duplicate name '{s}'")));
        }
        Ok(s.to_owned())
    }
}
