//! `flagstore completions`: shell completion scripts, generated from the argument definitions.

use std::io::Write;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::{Cli, Outcome};
use flagstore::error::Result;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  flagstore completions bash > /etc/bash_completion.d/flagstore
  flagstore completions zsh > \"${fpath[1]}/_flagstore\"
  flagstore completions fish > ~/.config/fish/completions/flagstore.fish")]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn run(out: &mut impl Write, args: &CompletionsArgs) -> Result<Outcome> {
    // clap_complete panics when a write fails (a reader that stopped early): generate into
    // memory, then write as every command does.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "flagstore", &mut script);
    out.write_all(&script).map_err(super::stdout_error)?;
    Ok(Outcome::Success)
}
