//! Which QEMU command lines are pure queries: help or version requests
//! whose answer depends only on the binary, so it can be recorded once and
//! replayed. The allow-list is explicit; anything not on it is not a pure
//! query (the shim then runs QEMU itself, and the agent refuses it).
//!
//! An argument list is a pure query when every argument is on the list
//! and at least one of them asks for help or the version:
//!
//! - `-h`, `-help`, `-version`;
//! - `OPT help` or `OPT ?` for OPT in `-M`/`-machine`, `-cpu`, `-device`,
//!   `-accel`, `-display`, `-audiodev`, `-netdev`, `-nic`, `-object`,
//!   `-chardev`, `-vga`;
//! - `-device NAME,help` and `-object NAME,help` (or `,?`);
//!
//! and beside them only modifiers that do not change such output:
//! `-nodefaults`, `-no-user-config`, `-nographic`, `-display none`,
//! `-enable-kvm`, `-accel kvm|tcg`, `-machine NAME[,accel=kvm|tcg|kvm:tcg|
//! tcg:kvm]` (and `-M`), `-S`. QEMU takes `--opt` for `-opt`; so does the
//! list. Names are 1–128 characters of letters, digits, `.`, `_`, `-`.
//!
//! Pure functions, no allocation: the shim calls this before anything
//! else on every exec.

use std::ffi::OsStr;

/// Options followed by a value that may be `help` or `?`.
const HELP_OPTIONS: &[&str] = &[
    "-M",
    "-machine",
    "-cpu",
    "-device",
    "-accel",
    "-display",
    "-audiodev",
    "-netdev",
    "-nic",
    "-object",
    "-chardev",
    "-vga",
];

/// Flags that ask for help or the version.
const HELP_FLAGS: &[&str] = &["-h", "-help", "-version"];

/// Flags that change nothing a query prints.
const MODIFIER_FLAGS: &[&str] = &[
    "-nodefaults",
    "-no-user-config",
    "-nographic",
    "-enable-kvm",
    "-S",
];

/// The accelerators `-accel` and `-machine …,accel=` may name.
const ACCELS: &[&str] = &["kvm", "tcg", "kvm:tcg", "tcg:kvm"];

/// The longest name allowed in a query.
/// (Also the longest name a check, or the config's `device_properties`,
/// takes: one limit for every name.)
pub const MAX_NAME: usize = 128;

/// One argument's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Asks for help or the version.
    Query,
    /// Allowed beside a query.
    Modifier,
}

/// `-opt` for `--opt` (QEMU takes both); other text as it is.
fn option(arg: &str) -> &str {
    match arg.strip_prefix("--") {
        Some(rest) if !rest.is_empty() => &arg[1..],
        _ => arg,
    }
}

fn is_help(value: &str) -> bool {
    value == "help" || value == "?"
}

/// A plain name: 1–[`MAX_NAME`] letters, digits, `.`, `_`, `-`, not
/// starting with `-`.
pub fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The role of `opt VALUE`, if the pair is on the list.
fn with_value(opt: &str, value: &str) -> Option<Role> {
    if is_help(value) {
        return Some(Role::Query);
    }
    match opt {
        "-device" | "-object" => {
            let (name, help) = value.split_once(',')?;
            (is_plain_name(name) && is_help(help)).then_some(Role::Query)
        }
        "-M" | "-machine" => {
            let (name, rest) = match value.split_once(',') {
                Some((n, r)) => (n, Some(r)),
                None => (value, None),
            };
            let accel_ok = match rest {
                None => true,
                Some(r) => r
                    .strip_prefix("accel=")
                    .is_some_and(|a| ACCELS.contains(&a)),
            };
            (is_plain_name(name) && accel_ok).then_some(Role::Modifier)
        }
        "-accel" => ACCELS[..2].contains(&value).then_some(Role::Modifier),
        "-display" => (value == "none").then_some(Role::Modifier),
        _ => None,
    }
}

/// Whether `args` (without argv[0]) are a pure query. Arguments that are
/// not UTF-8 are not on the list.
pub fn is_pure_query<S: AsRef<OsStr>>(args: &[S]) -> bool {
    let mut asks = false;
    let mut i = 0;
    while i < args.len() {
        let Some(arg) = args[i].as_ref().to_str() else {
            return false;
        };
        let opt = option(arg);
        let role = if HELP_FLAGS.contains(&opt) {
            Role::Query
        } else if MODIFIER_FLAGS.contains(&opt) {
            Role::Modifier
        } else if HELP_OPTIONS.contains(&opt) {
            i += 1;
            let Some(value) = args.get(i).and_then(|v| v.as_ref().to_str()) else {
                return false;
            };
            match with_value(opt, value) {
                Some(r) => r,
                None => return false,
            }
        } else {
            return false;
        };
        asks |= role == Role::Query;
        i += 1;
    }
    asks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pure(line: &str) -> bool {
        let args: Vec<&str> = line.split_whitespace().collect();
        is_pure_query(&args)
    }

    /// Every form the allow-list names, as callers write them.
    #[test]
    fn the_allow_listed_queries_are_pure() {
        for q in [
            "-h",
            "-help",
            "--help",
            "-version",
            "--version",
            "-M help",
            "-M ?",
            "-machine help",
            "-cpu help",
            "-cpu ?",
            "-device help",
            "-device ?",
            "-accel help",
            "-display help",
            "-audiodev help",
            "-netdev help",
            "-nic help",
            "-object help",
            "-chardev help",
            "-vga help",
            "-device virtio-net-pci,help",
            "-device no-such-device,?",
            "-object memory-backend-file,help",
            "--device help",
            // kvm's "kvm --help", and modifiers beside a query.
            "-enable-kvm --help",
            "-nodefaults -no-user-config -nographic -display none -S -machine help",
            "-accel kvm -cpu help",
            "-accel tcg -device help",
            "-machine q35 -cpu help",
            "-machine pc-q35-10.0,accel=kvm -device help",
            "-M virt,accel=kvm:tcg -cpu help",
            "-version -help",
        ] {
            assert!(pure(q), "{q}");
        }
    }

    #[test]
    fn everything_else_is_not() {
        for q in [
            "",
            // Modifiers alone ask nothing.
            "-nodefaults -S",
            "-enable-kvm",
            "-machine q35",
            // A VM start.
            "-machine q35 -m 1024 -drive file=disk.img",
            "-cpu help -m 1024",
            "-cpu host",
            "-device virtio-net-pci",
            "-device virtio-net-pci,netdev=n0",
            "-device virtio-net-pci,help,x=1",
            "-object memory-backend-file,help,mem-path=/dev/shm",
            "-display gtk",
            "-accel hvf -cpu help",
            "-accel kvm,thread=multi -cpu help",
            "-machine q35,accel=hvf -cpu help",
            "-machine q35,kernel-irqchip=on -cpu help",
            "-machine ../../etc -cpu help",
            "-device ../x,help",
            "-cpu",
            "-device",
            "-L /tmp -cpu help",
            "-cpu help -qmp unix:/tmp/s",
            "-chardev socket,id=x,path=/tmp/s -cpu help",
            "--",
            "-- -cpu help",
            "-help extra",
            "-netdev user,id=n0",
            "-vga std",
        ] {
            assert!(!pure(q), "{q:?}");
        }
    }

    #[test]
    fn names_are_plain_and_bounded() {
        assert!(pure(&format!("-device {},help", "d".repeat(MAX_NAME))));
        assert!(!pure(&format!("-device {},help", "d".repeat(MAX_NAME + 1))));
        for bad in ["a b", "a/b", "a\0b", "é", "a;b", "-x"] {
            assert!(!is_plain_name(bad), "{bad:?}");
            let args = ["-device".to_owned(), format!("{bad},help")];
            assert!(!is_pure_query(&args), "{bad:?}");
        }
    }

    #[test]
    fn arguments_that_are_not_utf8_are_not_pure() {
        use std::os::unix::ffi::OsStrExt;
        let bad = OsStr::from_bytes(b"-cpu\xff");
        assert!(!is_pure_query(&[bad]));
        assert!(!is_pure_query(&[
            OsStr::new("-device"),
            OsStr::from_bytes(b"\xff,help")
        ]));
    }
}
