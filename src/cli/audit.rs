//! `flagstore audit`: query the audit log, verify its hash chain and write checkpoints.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::{ActorOption, DbOption, Globals, Outcome, stdout_error, table};
use flagstore::audit::{AuditQuery, AuditRow, Checkpoint, parse_time_bound};
use flagstore::error::{Error, Result};
use flagstore::file::write_atomically;
use flagstore::heads::{HeadLines, HeadVerifier, SignedHead, newest_head};
use flagstore::store::{HeadsVerified, PageCheck, Store};

#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:
  flagstore audit --flag enrich --context tenant:acme --kind evaluation
  flagstore audit --kind change --actor alice --since 2026-11-01
  flagstore audit --asc --limit 0 --format csv > audit.csv"
)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Only rows about this flag.
    #[arg(long)]
    pub flag: Option<String>,
    /// Only rows about this context key.
    #[arg(long)]
    pub context: Option<String>,
    /// Only evaluation rows or only change rows.
    #[arg(long, value_parser = ["evaluation", "change"])]
    pub kind: Option<String>,
    /// Only rows at or after this time (RFC 3339, or a date meaning its midnight UTC).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only rows at or before this time (RFC 3339, or a date meaning that whole day).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// At most this many rows; 0 for no limit.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        allow_negative_numbers = true
    )]
    pub limit: u32,
    /// Oldest first instead of newest first.
    #[arg(long)]
    pub asc: bool,
    /// Continue after the row with this id (printed on stderr when a page is full).
    #[arg(long, value_name = "ID")]
    pub cursor: Option<i64>,
    /// Output format: table (escaped for a terminal), json (one array), jsonl or csv; json,
    /// jsonl and csv carry every column verbatim.
    #[arg(long, default_value = "table", value_parser = ["table", "json", "jsonl", "csv"])]
    pub format: String,
    #[command(flatten)]
    pub db: DbOption,
    #[command(flatten)]
    pub actor: ActorOption,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check that the audit trail's pages are sound (SQLite's quick_check) and walk the hash
    /// chain; exit 0 with the row count and head hash when it holds, 2 naming the first row
    /// that does not verify.
    #[command(after_help = "Examples:
  flagstore audit verify
  flagstore audit verify --checkpoint anchor.json
  flagstore audit verify --expect-head 3f1c...e9")]
    Verify(VerifyArgs),
    /// Write the current head (row id and hash) as a checkpoint file, to keep elsewhere.
    #[command(after_help = "Examples:
  flagstore audit checkpoint -o anchor.json
  flagstore audit checkpoint | ssh vault 'cat >> flagstore-anchors.jsonl'")]
    Checkpoint(CheckpointArgs),
    /// Print a proof, as JSON, that a row is in the tree a signed head covers (inclusion), or
    /// that a later tree extends an earlier one (consistency); scripts/verify_tree_proof.py
    /// checks it with the public key alone.
    #[command(after_help = "Examples:
  flagstore audit prove 1234 --heads /mnt/witness/heads.jsonl > row-1234.json
  flagstore audit prove 1234 --heads /mnt/witness/heads.jsonl --size 5000
  flagstore audit prove --from-size 1000 --heads /mnt/witness/heads.jsonl")]
    Prove(ProveArgs),
    /// Write the audit rows as stored, one JSON object per line: exactly what each row's hash
    /// covers, so scripts/verify_audit_chain.py re-hashes the export as it does the database.
    #[command(after_help = "Examples:
  flagstore audit export > audit-chain.jsonl
  flagstore audit export --after 1000000 | gzip > audit-rows-after-1000000.jsonl.gz")]
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Only the rows after this one (its hash is the first exported row's prev_hash).
    #[arg(long, value_name = "ID", default_value_t = 0)]
    pub after: i64,
    #[command(flatten)]
    pub db: DbOption,
}

#[derive(Debug, Args)]
pub struct ProveArgs {
    /// The row to prove included.
    #[arg(value_name = "ROW", required_unless_present = "from_size")]
    pub row: Option<i64>,
    /// Prove instead that the tree of the first SIZE rows is a prefix of the later tree.
    #[arg(long, value_name = "SIZE", conflicts_with = "row")]
    pub from_size: Option<u64>,
    /// Prove against the newest head of this heads file, printed with the proof (without it,
    /// against every row the store holds now, which nobody signed).
    #[arg(long, value_name = "FILE")]
    pub heads: Option<PathBuf>,
    /// Prove against the tree of this many rows: with --heads, the head of that size (one a
    /// reviewer kept), else the store's first SIZE rows.
    #[arg(long, value_name = "SIZE")]
    pub size: Option<u64>,
    #[command(flatten)]
    pub db: DbOption,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Also hold the log to every signed head of this heads file: each signature, each head
    /// larger than the last, and the root the store's rows give at each head's size.
    #[arg(long, value_name = "FILE", requires = "public_key")]
    pub heads: Option<PathBuf>,
    /// The public key that signed the heads (FILE.pub of `flagstore keys generate`).
    #[arg(long, value_name = "FILE", requires = "heads")]
    pub public_key: Option<PathBuf>,
    /// With --heads: check only the newest head and the rows after it, trusting the head for
    /// the rows it covers (logarithmic in them instead of linear); their pages are not read
    /// either, but for the rows from a --checkpoint's row on (every row for --expect-head,
    /// whose row is found by walking): `audit verify` without this, or `check`, reads every
    /// page.
    #[arg(long, requires = "heads")]
    pub from_newest_head: bool,
    /// Also require this hash (a head printed earlier) to be in the chain.
    #[arg(long, value_name = "HASH", conflicts_with = "checkpoint")]
    pub expect_head: Option<String>,
    /// Also require the row recorded in this checkpoint file to be in the chain.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    #[command(flatten)]
    pub db: DbOption,
}

#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// Write to this file (atomically) instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub db: DbOption,
}

/// The head of `heads` a proof is made against: the one of `size` rows, else the newest.
fn head_to_prove_against(heads: &Path, size: Option<u64>) -> Result<SignedHead> {
    let missing = |why: String| Error::BadHeads {
        path: heads.display().to_string(),
        at: "end".into(),
        why,
    };
    match size {
        None => newest_head(heads)?.ok_or_else(|| missing("no head to prove against".into())),
        Some(size) => HeadLines::open(heads)?
            .find_map(|head| match head {
                Ok((_, head)) if head.size != size => None,
                found => Some(found.map(|(_, head)| head)),
            })
            .unwrap_or_else(|| Err(missing(format!("no head of {size} rows")))),
    }
}

/// What `audit verify --heads` says it held.
fn heads_verified_line(heads: &Path, from_newest: bool, held: &HeadsVerified) -> String {
    let mut text = match (&held.newest, from_newest) {
        (None, _) => format!(
            "audit log verified: {} rows, head {}; {} holds no head yet: no row is signed",
            held.rows,
            held.head,
            heads.display()
        ),
        (Some((_, newest)), true) => format!(
            "audit log verified from the newest head of {} (signed {}, rows 1..={} taken as \
             signed, {}): {} rows, head {}",
            heads.display(),
            newest.time,
            newest.size,
            match u64::try_from(held.read_from - 1).unwrap_or(0) {
                0 => "every row re-hashed to find the checkpoint".to_string(),
                before if before < newest.size => format!(
                    "rows {}..={} re-hashed from the checkpoint's row on, pages before it not read",
                    held.read_from, newest.size
                ),
                _ => "their pages not read".to_string(),
            },
            held.rows,
            held.head
        ),
        (Some((line, newest)), false) => format!(
            "audit log verified: {} rows, head {}; {} of {} {}, the newest (line {line}, signed \
             {}) covers rows 1..={}",
            held.rows,
            held.head,
            match held.heads {
                1 => "the one signed head".to_string(),
                heads => format!("all {heads} signed heads"),
            },
            heads.display(),
            if held.heads == 1 { "holds" } else { "hold" },
            newest.time,
            newest.size
        ),
    };
    let signed = held.newest.as_ref().map_or(0, |(_, head)| head.size);
    let unsigned = u64::try_from(held.rows).unwrap_or(0).saturating_sub(signed);
    if unsigned > 0 {
        text.push_str(&format!(
            "; rows {}..={} are not yet under a signed head",
            signed + 1,
            held.rows
        ));
    }
    if !held.cut_short.is_empty() {
        text.push_str(&format!("; {}", held.cut_short));
    }
    text
}

/// `audit verify`: the chain (and the heads, given), and the trail's pages unless from the
/// newest head; its line is printed once all of it held.
fn verify(store: &Store, out: &mut impl Write, args: &VerifyArgs) -> Result<Outcome> {
    let checkpoint = match (&args.expect_head, &args.checkpoint) {
        (Some(hash), _) => Some(Checkpoint {
            id: None,
            hash: hash.clone(),
        }),
        (None, Some(path)) => Some(read_checkpoint(path)?),
        (None, None) => None,
    };
    let walk = || -> Result<String> {
        if let (Some(heads), Some(public_key)) = (&args.heads, &args.public_key) {
            let verifier = HeadVerifier::load(public_key)?;
            let held =
                store.verify_heads(&verifier, heads, args.from_newest_head, checkpoint.as_ref())?;
            return Ok(heads_verified_line(heads, args.from_newest_head, &held));
        }
        let verified = store.verify_audit(checkpoint.as_ref())?;
        Ok(format!(
            "audit log verified: {} rows, head {}",
            verified.rows, verified.head
        ))
    };
    // From a head, only the rows after it are read: a check of every page would make the
    // cheap, frequent check cost as much as the whole one.
    let line = if args.from_newest_head {
        walk()?
    } else {
        store.with_storage_checked(PageCheck::AuditTrail, walk)?.1
    };
    writeln!(out, "{line}").map_err(stdout_error)?;
    Ok(Outcome::Success)
}

/// Runs an `audit` subcommand, or a query when none is given.
pub fn run(globals: &Globals, out: &mut impl Write, args: &AuditArgs) -> Result<Outcome> {
    match &args.command {
        Some(AuditCommand::Verify(args)) => {
            globals.reading(&args.db, |store| verify(store, out, args))
        }
        Some(AuditCommand::Export(export)) => globals.reading(&export.db, |store| {
            store.for_each_audit_row(export.after.max(0) + 1, |row| {
                writeln!(out, "{}", row.stored_json()).map_err(stdout_error)
            })?;
            Ok(Outcome::Success)
        }),
        Some(AuditCommand::Prove(prove)) => globals.reading(&prove.db, |store| {
            let signed = match &prove.heads {
                None => None,
                Some(path) => Some(head_to_prove_against(path, prove.size)?),
            };
            let size = signed.as_ref().map(|head| head.size).or(prove.size);
            let mut proof = match (prove.row, prove.from_size) {
                (Some(row), _) => store.inclusion_proof(row, size)?,
                (None, Some(old)) => store.consistency_proof(old, size)?,
                (None, None) => unreachable!("clap requires a row or --from-size"),
            };
            proof.head = signed;
            let json = serde_json::to_string_pretty(&proof).expect("a proof serializes");
            writeln!(out, "{json}").map_err(stdout_error)?;
            Ok(Outcome::Success)
        }),
        Some(AuditCommand::Checkpoint(checkpoint)) => globals.reading(&checkpoint.db, |store| {
            let verified = store.verify_audit(None)?;
            let anchor = Checkpoint {
                id: Some(verified.rows),
                hash: verified.head,
            };
            let json = format!("{}\n", serde_json::to_string(&anchor).expect("json"));
            match &checkpoint.output {
                Some(path) => write_atomically(path, json.as_bytes())?,
                None => out.write_all(json.as_bytes()).map_err(stdout_error)?,
            }
            Ok(Outcome::Success)
        }),
        None => {
            let actor = globals.actor_filter(&args.actor);
            let next_page = globals.reading(&args.db, |store| {
                audit_query(store, out, args, actor.as_deref())
            })?;
            if let Some(cursor) = next_page {
                let rows = if args.limit == 1 { "row" } else { "rows" };
                eprintln!(
                    "flagstore: {} {rows} shown; the next page: {}",
                    args.limit,
                    next_page_command(globals, args, cursor)
                );
            }
            Ok(Outcome::Success)
        }
    }
}

/// The command line that prints the page after `cursor`: this one with `--cursor` moved.
fn next_page_command(globals: &Globals, args: &AuditArgs, cursor: i64) -> String {
    let mut words = vec!["flagstore".to_string(), "audit".to_string()];
    let mut option = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            words.push(format!("--{name}"));
            words.push(shell_quoted(&value));
        }
    };
    // A --db from the environment stays there; one given on the command line is repeated
    // without its password.
    option(
        "db",
        args.db
            .path
            .as_ref()
            .or(globals.db.path.as_ref())
            .map(|given| match flagstore::store::Location::parse(given) {
                flagstore::store::Location::Postgres(url) => flagstore::store::url_to_repeat(&url),
                sqlite => sqlite.to_string(),
            }),
    );
    option("flag", args.flag.clone());
    option("context", args.context.clone());
    option("kind", args.kind.clone());
    option("actor", globals.actor_filter(&args.actor));
    option("since", args.since.clone());
    option("until", args.until.clone());
    option("limit", Some(args.limit.to_string()));
    if args.format != "table" {
        option("format", Some(args.format.clone()));
    }
    if args.asc {
        words.push("--asc".to_string());
    }
    words.push("--cursor".to_string());
    words.push(cursor.to_string());
    words.join(" ")
}

/// `value` as one word for a POSIX shell.
fn shell_quoted(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:@%+=,".contains(c));
    if plain {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', "'\\''"))
    }
}

/// Prints the rows `args` select; returns the cursor of the next page when this one is full.
fn audit_query(
    store: &Store,
    out: &mut impl Write,
    args: &AuditArgs,
    actor: Option<&str>,
) -> Result<Option<i64>> {
    let bound = |value: &Option<String>, until| {
        value
            .as_deref()
            .map(|v| parse_time_bound(v, until))
            .transpose()
    };
    let query = AuditQuery {
        flag: args.flag.clone(),
        context: args.context.clone(),
        kind: args.kind.clone(),
        actor: actor.map(str::to_string),
        since: bound(&args.since, false)?,
        until: bound(&args.until, true)?,
        limit: (args.limit > 0).then_some(i64::from(args.limit)),
        ascending: args.asc,
        cursor: args.cursor,
    };
    let mut rows_written = 0;
    let mut last_id = None;
    let mut seen = |row: &AuditRow| {
        rows_written += 1;
        last_id = Some(row.id);
    };
    match args.format.as_str() {
        "table" => {
            let mut rows = Vec::new();
            store.query_audit(&query, |row| {
                seen(&row);
                rows.push(audit_table_row(&row));
                Ok::<(), Error>(())
            })?;
            // Every column but detail and the hashes, which only fit the other formats.
            out.write_all(table(&flagstore::audit::COLUMNS[..10], rows).as_bytes())
                .map_err(stdout_error)?;
        }
        "csv" => {
            let mut csv = csv::Writer::from_writer(&mut *out);
            csv.write_record(flagstore::audit::COLUMNS)
                .map_err(csv_error)?;
            store.query_audit(&query, |row| {
                seen(&row);
                csv.write_record(row.csv_record()).map_err(csv_error)
            })?;
            csv.flush().map_err(stdout_error)?;
        }
        format => {
            let json_array = format == "json";
            if json_array {
                out.write_all(b"[").map_err(stdout_error)?;
            }
            let mut first = true;
            store.query_audit(&query, |row| {
                seen(&row);
                let separator: &[u8] = match (json_array, first) {
                    (true, true) => b"\n",
                    (true, false) => b",\n",
                    (false, _) => b"",
                };
                first = false;
                out.write_all(separator).map_err(stdout_error)?;
                serde_json::to_writer(&mut *out, &row).map_err(|e| stdout_error(e.into()))?;
                if !json_array {
                    out.write_all(b"\n").map_err(stdout_error)?;
                }
                Ok::<(), Error>(())
            })?;
            if json_array {
                out.write_all(b"\n]\n").map_err(stdout_error)?;
            }
        }
    }
    Ok(last_id.filter(|_| query.limit.is_some_and(|limit| rows_written >= limit)))
}

/// The write error inside a CSV error, so that a reader that went away is seen as one.
fn csv_error(error: csv::Error) -> Error {
    stdout_error(match error.into_kind() {
        csv::ErrorKind::Io(source) => source,
        // Records of strings meet no other kind of error.
        other => io::Error::other(format!("{other:?}")),
    })
}

/// The CSV record's first ten columns, with the result as people read it.
fn audit_table_row(row: &AuditRow) -> Vec<String> {
    let mut cells = row.fields();
    cells.truncate(10);
    cells[7] = row.result.map_or(String::new(), |r| (r == 1).to_string());
    cells
}

fn read_checkpoint(path: &Path) -> Result<Checkpoint> {
    use flagstore::file::{SMALL_FILE_BYTES, read_small_text};
    let bad = |why| Error::BadCheckpoint {
        path: path.display().to_string(),
        why,
    };
    let text = read_small_text(path)?
        .ok_or_else(|| bad(format!("larger than {SMALL_FILE_BYTES} bytes")))?;
    Checkpoint::parse(&text).map_err(bad)
}
