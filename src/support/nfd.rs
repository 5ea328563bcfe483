//! The rules of node-feature-discovery's feature files (its `local`
//! source, the `features.d` directory), shared by the config that checks
//! what an operator lists and the agent that writes the file:
//!
//! - a line is `PREFIX/NAME=VALUE`; `#` starts a comment, and the
//!   directive `# +expiry-time=RFC3339` makes the lines after it expire;
//! - NAME and VALUE follow Kubernetes' label rules: at most 63 characters
//!   of `[A-Za-z0-9._-]`, alphanumeric at both ends (a value may also be
//!   empty; ours never are);
//! - a file over 64 KiB is ignored whole;
//! - files whose names start with `.` are ignored (so a file is written
//!   as a dotfile, then renamed).

/// The prefix (label namespace) of every label qcapsd writes.
pub const PREFIX: &str = "qcapsd.io/";
/// The longest label name (after the prefix) and the longest value.
pub const MAX_PART: usize = 63;
/// NFD ignores a feature file larger than this.
pub const MAX_FILE: usize = 64 * 1024;

/// Whether `s` is a label name (after the prefix) or a non-empty value by
/// Kubernetes' rules: 1–63 of `[A-Za-z0-9._-]`, alphanumeric at both ends.
pub fn is_label_part(s: &str) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-');
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            b.len() <= MAX_PART
                && first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter().all(inner)
        }
        _ => false,
    }
}

/// The characters a label part may hold, for messages.
pub const RULE: &str =
    "1-63 letters, digits, '.', '_' or '-', starting and ending with a letter or digit";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_parts_follow_kubernetes_rules() {
        for ok in [
            "a",
            "x86_64.cpu.Skylake-Server",
            "10.0.2",
            "pc-q35-10.0",
            "Z9",
        ] {
            assert!(is_label_part(ok), "{ok}");
        }
        let long = "a".repeat(MAX_PART + 1);
        for bad in ["", "-a", "a-", ".a", "a_", "a b", "a/b", "a+b", "é", &long] {
            assert!(!is_label_part(bad), "{bad:?}");
        }
        assert!(is_label_part(&"a".repeat(MAX_PART)));
    }
}
