//! `securesock completions SHELL` and `securesock manual PAGE`: the shell completion scripts
//! (clap_complete) and the two manual pages, securesock(1) (clap_mangen) and securesock.toml(5),
//! all generated from the clap definitions in `config/args.rs`, so none of them can name a flag
//! that is not there or miss one that is.
//!
//! Owns the hand-written parts of the pages (signals, files, exit codes, the file's tables and
//! example) and how they are put together. Never reads a file, never parses a command line or a
//! configuration, and imports nothing from the crate but `config`'s clap definitions and key lists.
//!
//! Why a subcommand of the binary rather than a build script or a second binary: the package build
//! (`scripts/build-deb.sh`) and a user without the package (`securesock manual securesock.1 | man
//! -l -`) run the very binary whose flags the pages describe, so a page can never come from other
//! sources than the program installed beside it; a build script would need the clap definitions
//! in a crate of their own, and a second binary would ship a second executable for four files.

mod command_page;
mod file_page;
mod roff_text;

use std::io::{self, Write};

use clap::CommandFactory;
use clap_complete::Shell;

use crate::config::{Cli, CompletionShell, ManualPage};

/// The program's name in the pages and in the completion scripts.
const NAME: &str = "securesock";

/// Writes the completion script for `shell`.
pub fn completions(shell: CompletionShell, out: &mut dyn Write) -> io::Result<()> {
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, NAME, out);
    Ok(())
}

/// Writes one manual page, in roff.
pub fn page(page: ManualPage, out: &mut dyn Write) -> io::Result<()> {
    match page {
        ManualPage::Command => command_page::render(out),
        ManualPage::File => file_page::render(out),
    }
}

/// The clap command as the pages describe it: built (so defaults and value names are filled in)
/// and named as installed.
fn command() -> clap::Command {
    let mut command = Cli::command().bin_name(NAME);
    command.build();
    command
}
