use std::io::ErrorKind;
use std::process::ExitCode;

use clap::Parser;
use flagstore::Error;
use flagstore::cli::{self, Cli, Outcome};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli::run(cli) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Off) => ExitCode::from(1),
        // A reader that stops early (`| head`) is not a failure of ours.
        Err(Error::Write { ref source, .. }) if source.kind() == ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("flagstore: {error}");
            ExitCode::from(2)
        }
    }
}
