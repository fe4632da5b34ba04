//! `flagstore bench`: throughput and latency on a temporary database.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;

use super::Outcome;
use crate::error::Result;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Batch evaluation: a fresh store (all sticky misses), then the same keys again (hits).
    #[command(after_help = "Examples:
  flagstore bench eval --keys 1000000
  flagstore bench eval --keys 200000 --dir /dev/shm")]
    Eval {
        /// Context keys per pass.
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// Directory for the temporary database [default: the system's temporary directory].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Audit queries: fill the log with this many evaluation rows, then time the queries
    /// reviewers run and a full chain verification.
    #[command(after_help = "Examples:
  flagstore bench audit --rows 10000000
  flagstore bench audit --rows 100000 --dir /dev/shm")]
    Audit {
        /// Evaluation rows to fill the log with.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Directory for the temporary database [default: the system's temporary directory].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

pub fn run(out: &mut impl Write, command: &BenchCommand) -> Result<Outcome> {
    match command {
        BenchCommand::Eval { keys, dir } => {
            let dir = dir.clone().unwrap_or_else(std::env::temp_dir);
            crate::bench::run(*keys, &dir, out)?;
        }
        BenchCommand::Audit { rows, dir } => {
            let dir = dir.clone().unwrap_or_else(std::env::temp_dir);
            crate::bench::run_audit(*rows, &dir, out)?;
        }
    }
    Ok(Outcome::Success)
}
