//! `flagstore serve`: the OFREP server.

use std::io::Write;
use std::net::SocketAddr;

use clap::Args;

use super::{DbOption, Globals, Outcome, stdout_error};
use crate::error::Result;
use crate::serve::{ServeConfig, serve};

#[derive(Debug, Args)]
#[command(
    after_help = "Answers the OpenFeature remote evaluation protocol (OFREP):
  POST /ofrep/v1/evaluate/flags/{key}   one flag for {\"context\": {\"targetingKey\": K}}
  POST /ofrep/v1/evaluate/flags         every flag (ETag; If-None-Match gives 304)
  GET  /healthz                         200 when the store answers
  GET  /metrics                         Prometheus text
Each request is authenticated by `Authorization: Bearer TOKEN` or `X-API-Key: TOKEN`
(`flagstore token create NAME`); the token's name is the actor its evaluations are recorded
under. Every decision is committed before it is answered. SIGTERM or SIGINT stops accepting,
answers what is in flight and exits 0.

Examples:
  flagstore serve --listen 0.0.0.0:8016
  flagstore serve --no-auth"
)]
pub struct ServeArgs {
    /// Address and port to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8016", value_name = "ADDRESS:PORT")]
    pub listen: SocketAddr,
    /// Accept requests without a token (recorded as actor "serve (no auth)"); only on a
    /// loopback address.
    #[arg(long)]
    pub no_auth: bool,
    #[command(flatten)]
    pub db: DbOption,
}

pub fn run(globals: &Globals, out: &mut impl Write, args: &ServeArgs) -> Result<Outcome> {
    let config = ServeConfig {
        listen: args.listen,
        no_auth: args.no_auth,
    };
    let store = globals.open_existing(&args.db)?;
    if store.flags()?.is_empty() {
        // Every OFREP request would be a 404, which SDKs turn into their defaults unseen.
        eprintln!(
            "flagstore: warning: {} defines no flags: every evaluation will answer \
             FLAG_NOT_FOUND (create flags with `flagstore import FILE` or `flagstore flag create`)",
            store.path()
        );
    }
    let mut announced: Result<()> = Ok(());
    serve(store, &config, |address| {
        // Printed and flushed at once: scripts and tests wait for this line to connect.
        announced = writeln!(out, "listening on http://{address}")
            .and_then(|()| out.flush())
            .map_err(stdout_error);
    })?;
    announced.map(|()| Outcome::Success)
}
