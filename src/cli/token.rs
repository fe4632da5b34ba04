//! `flagstore token`: the API tokens `flagstore serve` accepts.

use std::io::Write;

use clap::{Args, Subcommand};

use super::{ActorOption, DbOption, Globals, Outcome, stdout_error, table};
use flagstore::error::Result;
use flagstore::token::{self, Role};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it, once: only its SHA-256 is stored (audited).
    #[command(
        after_help = "The token's name is the actor of every evaluation made with it.

Examples:
  flagstore token create billing-worker
  flagstore token create night-operator --role operator
  export FLAGSTORE_TOKEN=$(flagstore token create reporting)"
    )]
    Create(CreateArgs),
    /// List tokens (names and times; the tokens themselves are not kept).
    #[command(after_help = "Examples:
  flagstore token list")]
    List(ListArgs),
    /// Revoke a token: the server refuses it from its next request (audited).
    #[command(after_help = "Examples:
  flagstore token revoke billing-worker")]
    Revoke(NameArgs),
}

#[derive(Debug, Args)]
pub struct NameArgs {
    /// The token's name, recorded as the actor of what it does.
    pub name: String,
    #[command(flatten)]
    pub db: DbOption,
    #[command(flatten)]
    pub actor: ActorOption,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub token: NameArgs,
    /// What the token may do: viewer (evaluate, read), operator (also change flags), admin
    /// (also manage tokens).
    #[arg(long, value_enum, default_value_t = Role::Viewer)]
    pub role: Role,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub db: DbOption,
}

pub fn run(globals: &Globals, out: &mut impl Write, command: TokenCommand) -> Result<Outcome> {
    match command {
        TokenCommand::Create(CreateArgs { token: args, role }) => {
            let actor = globals.writer(&args.actor);
            let secret = token::generate()?;
            globals.with_store(&args.db, |store| {
                store.create_token(&args.name, &token::sha256_hex(&secret), role, &actor)
            })?;
            writeln!(out, "{secret}").map_err(stdout_error)?;
        }
        TokenCommand::List(args) => {
            let tokens = globals.reading(&args.db, |store| store.tokens())?;
            let rows = tokens
                .into_iter()
                .map(|t| {
                    let status = if t.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    vec![
                        t.name,
                        t.role.as_str().to_string(),
                        status.to_string(),
                        t.created_at,
                        t.revoked_at.unwrap_or_default(),
                    ]
                })
                .collect();
            let text = table(
                &["name", "role", "status", "created_at", "revoked_at"],
                rows,
            );
            out.write_all(text.as_bytes()).map_err(stdout_error)?;
        }
        TokenCommand::Revoke(args) => {
            let actor = globals.writer(&args.actor);
            globals.with_store(&args.db, |store| store.revoke_token(&args.name, &actor))?;
            writeln!(out, "revoked token {}", args.name).map_err(stdout_error)?;
        }
    }
    Ok(Outcome::Success)
}
