//! Prints the `qcapsd(1)` man page, generated from the command line's
//! definition (`src/cli/mod.rs`), so the two cannot drift:
//! `cargo run --example man > qcapsd.1`. `scripts/package` puts it in the
//! Debian package.

use clap::CommandFactory;
use std::io::Write;

fn main() -> std::io::Result<()> {
    let cmd = qcapsd::cli::Cli::command();
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    // Each subcommand's arguments, as `qcapsd SUBCOMMAND --help` shows them.
    for sub in cmd.get_subcommands() {
        writeln!(out, ".SH \"QCAPSD {}\"", sub.get_name().to_uppercase())?;
        if let Some(about) = sub.get_about() {
            writeln!(out, "{}", roff_escape(&about.to_string()))?;
        }
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            let name = match (arg.get_long(), arg.get_short()) {
                (Some(l), Some(s)) => format!("\\-{s}, \\-\\-{l}"),
                (Some(l), None) => format!("\\-\\-{l}"),
                _ => arg.get_id().to_string().to_uppercase(),
            };
            writeln!(out, ".TP\n\\fB{name}\\fR")?;
            if let Some(help) = arg.get_help() {
                writeln!(out, "{}", roff_escape(&help.to_string()))?;
            }
        }
    }
    Ok(())
}

/// Text safe in a roff paragraph.
fn roff_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('-', "\\-")
        .lines()
        .map(|l| {
            l.strip_prefix('.')
                .map_or_else(|| l.to_owned(), |r| format!("\\&.{r}"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}
