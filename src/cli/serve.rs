//! `flagstore serve`: the OFREP server.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::{DbOption, Globals, Outcome, stdout_error};
use flagstore::error::Result;
use flagstore::serve::{Limits, ServeConfig, serve};
use flagstore::store::Publishing;

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
answers what is in flight (for up to --shutdown-timeout) and exits 0.
The same listener serves the web UI under /ui and the admin API under /api/admin/v1.
Given a signing key (`flagstore --signing-key KEY --heads FILE serve`, or the environment), a
signed tree head over the audit log is published every --head-every seconds while requests
are recorded, sooner after --head-every-rows of them, and once more at shutdown.

Examples:
  flagstore serve --listen 0.0.0.0:8016
  flagstore serve --no-auth"
)]
pub struct ServeArgs {
    /// Address (or host name, such as localhost) and port to listen on (port 0: any free
    /// port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8016", value_name = "ADDRESS:PORT", value_parser = listen_address)]
    pub listen: SocketAddr,
    /// Accept requests without a token (recorded as actor "serve (no auth)"); only on a
    /// loopback address.
    #[arg(long)]
    pub no_auth: bool,
    /// Seconds a client may take to send a request's headers, and a keep-alive connection
    /// may sit idle.
    #[arg(long, default_value_t = 15, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout: u64,
    /// Connections open at once; more wait in the kernel's backlog until one closes.
    #[arg(long, default_value_t = 512, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_connections: u64,
    /// Seconds requests in flight have after SIGTERM before their connections are closed.
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_timeout: u64,
    /// With a signing key (--signing-key and --heads before `serve`): publish a signed tree
    /// head at least this often while requests are recorded.
    #[arg(long, default_value_t = 1, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub head_every: u64,
    /// With a signing key: publish a head as soon as this many requests were recorded since
    /// the last.
    #[arg(long, default_value_t = 10_000, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub head_every_rows: u64,
    #[command(flatten)]
    pub db: DbOption,
}

pub fn run(globals: &Globals, out: &mut impl Write, args: &ServeArgs) -> Result<Outcome> {
    let config = ServeConfig {
        listen: args.listen,
        no_auth: args.no_auth,
        limits: Limits {
            header_timeout: Duration::from_secs(args.header_timeout),
            max_connections: args.max_connections as usize,
            shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        },
        publishing: globals.witness()?.map(|witness| Publishing {
            key: Arc::new(witness.key),
            heads: witness.heads,
            every: Duration::from_secs(args.head_every),
            every_rows: args.head_every_rows,
            witness: witness.witness_url,
        }),
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

/// `ADDRESS:PORT` or `HOST:PORT`, a host name resolved to its first address.
fn listen_address(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let mut addresses = text
        .to_socket_addrs()
        .map_err(|e| format!("{text:?} is not an ADDRESS:PORT or HOST:PORT ({e})"))?;
    addresses
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}
