//! `flagstore bench`: throughput and latency on a temporary database.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::Outcome;
use flagstore::bench::{KeyOrder, Load, Scratch};
use flagstore::error::{Error, Result};
use flagstore::store::Location;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Batch evaluation: a fresh store (all sticky misses), then the same keys again (hits).
    #[command(after_help = "Examples:
  flagstore bench eval --keys 200000
  flagstore bench eval --keys 200000 --dir /dev/shm
  flagstore bench eval --keys 200000 --order sequential --preload 0
  flagstore bench eval --keys 200000 --db postgres://postgres@localhost/test")]
    Eval {
        /// Context keys per pass.
        #[arg(long, default_value_t = 200_000)]
        keys: u64,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        scratch: ScratchArgs,
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
        #[command(flatten)]
        scratch: ScratchArgs,
    },
    /// `flagstore serve` under load: single-flag OFREP requests over keep-alive connections,
    /// beside a handler that does no store work (the HTTP ceiling).
    #[command(after_help = "Examples:
  flagstore bench serve --requests 200000 --connections 64
  flagstore bench serve --requests 1000000 --db postgres://postgres@localhost/test")]
    Serve {
        /// Requests per pass.
        #[arg(long, default_value_t = 200_000)]
        requests: u64,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Publish signed tree heads as `serve` does with a signing key (a key and heads file
        /// of the bench's own, removed afterwards), and report them.
        #[arg(long)]
        signed: bool,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        scratch: ScratchArgs,
    },
}

/// How the bench's keys arrive: as users send them unless told otherwise.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The order of the generated keys: random (UUID-shaped, as tenant and user ids arrive)
    /// or sequential (each sorting after the one before: the kindest case for the indexes).
    #[arg(long, value_enum, default_value_t = KeyOrder::Random)]
    order: KeyOrder,
    /// Contexts the store holds before the measured passes, one decision each (not timed).
    #[arg(long, value_name = "CONTEXTS", default_value_t = 1_000_000)]
    preload: u64,
}

impl LoadArgs {
    fn load(&self) -> Load {
        Load {
            order: self.order,
            preload: self.preload,
        }
    }
}

/// Where a bench's throw-away store goes.
#[derive(Debug, Args)]
pub struct ScratchArgs {
    /// Directory for the temporary SQLite database [default: the system's temporary directory].
    #[arg(long, conflicts_with = "postgres")]
    dir: Option<PathBuf>,
    /// Bench PostgreSQL instead: a postgres:// URL of a database in which the bench creates a
    /// scratch schema, dropped afterwards.
    #[arg(long = "db", id = "postgres", value_name = "URL")]
    postgres: Option<String>,
}

impl ScratchArgs {
    fn scratch(&self) -> Result<Scratch> {
        match (&self.postgres, &self.dir) {
            (Some(url), _) => match Location::parse(url.as_ref()) {
                Location::Postgres(url) => Ok(Scratch::Postgres(url)),
                Location::Sqlite(_) => Err(Error::Usage {
                    message: format!(
                        "bench --db takes a postgres:// URL, not {url:?}; an SQLite bench uses a \
                         temporary file (choose its directory with --dir)"
                    ),
                }),
            },
            (None, dir) => Ok(Scratch::Directory(
                dir.clone().unwrap_or_else(std::env::temp_dir),
            )),
        }
    }
}

/// A bench's output written through line by line: a bench runs for minutes, and its lines held
/// in the command's buffer until the end showed nothing while it ran.
struct EachLineShown<W>(W);

impl<W: Write> Write for EachLineShown<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.0.write(buf)?;
        if buf[..written].contains(&b'\n') {
            self.0.flush()?;
        }
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

pub fn run(out: &mut impl Write, command: &BenchCommand) -> Result<Outcome> {
    let out = &mut EachLineShown(out);
    match command {
        BenchCommand::Eval {
            keys,
            load,
            scratch,
        } => flagstore::bench::run(*keys, load.load(), &scratch.scratch()?, out)?,
        BenchCommand::Audit { rows, scratch } => {
            flagstore::bench::run_audit(*rows, &scratch.scratch()?, out)?
        }
        BenchCommand::Serve {
            requests,
            connections,
            signed,
            load,
            scratch,
        } => flagstore::bench::run_serve(
            *requests,
            (*connections).max(1),
            load.load(),
            &scratch.scratch()?,
            *signed,
            out,
        )?,
    }
    Ok(Outcome::Success)
}
