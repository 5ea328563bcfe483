//! `verify`: QEMU's own word on a verdict, had once per emulator
//! fingerprint and argument list. The VM is started in the exec sandbox
//! ([`crate::qemu::verify`]); its outcome is kept in the entry's second
//! memo (`Entry::verified`, the file `cache_dir/verify/KEY.json`): single
//! flight, bounded by `verify_max`, read back at start, and dropped with
//! the entry when the binary, its modules or the host change. Asking
//! twice costs one exec.
//!
//! The memo keeps [`Answer`]s; a verification is one as: exit status 0
//! (started) or QEMU's, its error line as stderr, and the devices left
//! out for want of a backend as stdout, a `DEVICE\tMESSAGE` line each.

use super::emulators::{Emulators, Entry};
use super::memo::{Answer, MemoError, QueryKey, Source};
use crate::qemu::exec::{Captured, Exit};
use crate::qemu::verify::verify;
use crate::verdicts::check::Confirmation;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The memo's name for verifications (never a program's name: it has a
/// space).
const VERIFY: &str = "verify VM";

/// What a kept verification says.
pub fn confirmation(a: &Answer) -> Confirmation {
    let unverified = String::from_utf8_lossy(&a.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(d, w)| (d.to_owned(), w.to_owned()))
        .collect();
    let message = (a.exit_code != 0).then(|| String::from_utf8_lossy(&a.stderr).into_owned());
    Confirmation {
        started: a.exit_code == 0,
        message,
        unverified,
    }
}

impl Emulators {
    /// QEMU's word on the VM `args` describe (see
    /// [`crate::verdicts::check::verify_args`]), from `entry`'s memo or
    /// had now by starting emulator `key` once (or once more per device
    /// that needs a backend).
    pub async fn verify(
        &self,
        key: &str,
        entry: &Arc<Entry>,
        args: Vec<String>,
    ) -> Result<(Confirmation, Source), MemoError> {
        let (view, path) = self.configured(key)?;
        let (timeout, tag, counter) = (
            view.settings.timeout,
            self.probe_tag().to_owned(),
            self.counter.clone(),
        );
        let query = QueryKey {
            argv0: VERIFY.to_owned(),
            args: args.clone(),
        };
        let (answer, source) = entry
            .verified
            .answer(query, move || async move {
                let started = std::time::Instant::now();
                let taken = verify(
                    &path,
                    &args,
                    timeout,
                    Some(&tag),
                    &counter,
                    &CancellationToken::new(),
                )
                .await?;
                let stdout: String = taken
                    .unverified
                    .iter()
                    .map(|(d, w)| format!("{d}\t{w}\n"))
                    .collect();
                Ok(Captured {
                    stdout: stdout.into_bytes(),
                    stderr: taken.message.unwrap_or_default().into_bytes(),
                    exit: Exit::Code(if taken.started {
                        0
                    } else {
                        taken.status.unwrap_or(1)
                    }),
                    duration: started.elapsed().max(Duration::ZERO),
                })
            })
            .await?;
        Ok((confirmation(&answer), source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_verification_reads_back() {
        let a = Answer::new(
            b"virtio-blk-pci\tdrive property not set\n".to_vec(),
            b"-cpu x: unable to find CPU model 'x'".to_vec(),
            1,
            0.05,
        );
        let c = confirmation(&a);
        assert!(!c.started);
        assert_eq!(
            c.message.as_deref(),
            Some("-cpu x: unable to find CPU model 'x'")
        );
        assert_eq!(
            c.unverified,
            [(
                "virtio-blk-pci".to_owned(),
                "drive property not set".to_owned()
            )]
        );
        let ok = confirmation(&Answer::new(Vec::new(), Vec::new(), 0, 0.05));
        assert!(ok.started && ok.message.is_none() && ok.unverified.is_empty());
    }
}
