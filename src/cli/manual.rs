//! Shell completion scripts and man pages, generated from the command line
//! so that they always list the flags the binary accepts.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::{Generator, Shell};

use super::Cli;

/// The name completions register for and man pages are titled with: the
/// installed binary's name, whatever the running executable is called.
pub const BIN_NAME: &str = "shellrelay";

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: Shell, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut cmd = Cli::command().bin_name(BIN_NAME);
    cmd.build();
    shell
        .try_generate(&cmd, out)
        .and_then(|()| out.flush())
        .or_else(reader_gone)
        .with_context(|| format!("could not write the {shell} completions"))
}

/// The command line as the man pages describe it. Without clap's `help`
/// subcommand: every page documents `--help` already.
fn documented() -> clap::Command {
    Cli::command()
        .bin_name(BIN_NAME)
        .disable_help_subcommand(true)
}

/// Writes the man page of the top-level command (roff, section 1) to `out`.
pub fn man(out: &mut dyn Write) -> anyhow::Result<()> {
    clap_mangen::Man::new(documented())
        .render(out)
        .and_then(|()| out.flush())
        .or_else(reader_gone)
        .context("could not write the man page")
}

/// A reader that stopped early (`shellrelay man | head`) is not an error.
fn reader_gone(err: std::io::Error) -> std::io::Result<()> {
    match err.kind() {
        std::io::ErrorKind::BrokenPipe => Ok(()),
        _ => Err(err),
    }
}

/// Writes one man page per command into `dir`, made if missing:
/// `shellrelay.1`, `shellrelay-relay.1`, ... Returns the files written.
pub fn man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let mut written = Vec::new();
    // Built, so that each subcommand is named `shellrelay-<sub>`.
    let mut cmd = documented();
    cmd.build();
    write_pages(cmd, dir, &mut written)?;
    Ok(written)
}

fn write_pages(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub.clone(), dir, written)?;
    }
    let man = clap_mangen::Man::new(cmd);
    let path = dir.join(man.get_filename());
    let mut file = std::fs::File::create(&path)
        .with_context(|| format!("could not create {}", path.display()))?;
    man.render(&mut file)
        .and_then(|()| file.flush())
        .with_context(|| format!("could not write {}", path.display()))?;
    written.push(path);
    Ok(())
}
