//! `flagstore keys`: the Ed25519 key that signs tree heads.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{Outcome, stdout_error};
use flagstore::error::Result;
use flagstore::heads::{HeadKey, public_path};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new signing key: FILE (private, mode 0600) and FILE.pub (public, for reviewers).
    #[command(
        after_help = "Keep FILE off the store's host if you can, and never in the \
database: whoever holds it can sign heads. Give FILE.pub to reviewers, who check heads with \
`flagstore audit verify --heads H --public-key FILE.pub` or scripts/verify_tree_proof.py.

Examples:
  flagstore keys generate /etc/flagstore/heads.key
  FLAGSTORE_SIGNING_KEY=/etc/flagstore/heads.key FLAGSTORE_HEADS=/mnt/witness/heads.jsonl flagstore eval enrich --context tenant:acme"
    )]
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Where to write the private key; the public key goes beside it, with `.pub` added.
    /// Neither may exist.
    #[arg(value_name = "FILE")]
    pub path: PathBuf,
}

pub fn run(out: &mut impl Write, command: &KeysCommand) -> Result<Outcome> {
    match command {
        KeysCommand::Generate(args) => {
            let key = HeadKey::generate(&args.path)?;
            writeln!(
                out,
                "wrote {} (private) and {} (public), key id {}",
                args.path.display(),
                public_path(&args.path).display(),
                key.public().id()
            )
            .map_err(stdout_error)?;
        }
    }
    Ok(Outcome::Success)
}
