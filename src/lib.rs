//! flagstore: feature flags for data pipelines, kept in one SQLite file or in PostgreSQL, with
//! sticky per-context assignments and an append-only, hash-chained audit trail.
//!
//! The evaluator ([`eval`]) is pure; all SQL lives in [`store`]; [`serve`] is the HTTP server.
//! The `flagstore` binary's command-line layer (`src/cli/`, declared by `src/main.rs`) and the
//! Python package (`python/`) call only this crate's public API:
//!
//! ```
//! use flagstore::{Flag, FlagSet, Selection, Store};
//!
//! # fn main() -> flagstore::Result<()> {
//! // A file path or a postgres:// URL with Store::open(&Location::parse(..)); here, memory.
//! let mut store = Store::open_in_memory()?;
//! store.modify("alice", "import", false, |_| {
//!     Ok([Flag::new("ingest"), Flag { rollout_pct: 50.0, ..Flag::new("enrich") }]
//!         .into_iter()
//!         .collect::<FlagSet>())
//! })?;
//! // Decided, stored per the sticky policy and recorded in the audit chain, then returned.
//! let evaluations = store.evaluate(&Selection::All, "tenant:acme", "nightly-etl")?;
//! assert_eq!(evaluations.len(), 2);
//! assert!(store.verify_audit(None)?.rows >= 3);
//! # Ok(())
//! # }
//! ```

pub mod audit;
#[cfg(feature = "bench")]
pub mod bench;
pub mod change;
pub mod contexts;
pub mod document;
pub mod error;
pub mod eval;
pub mod explain;
pub mod file;
pub mod flag;
pub mod heads;
mod hex;
pub mod merkle;
pub mod output;
pub mod prototype;
pub mod record;
pub mod serve;
pub mod store;
pub mod token;

pub use error::{Error, Result};
pub use eval::{Decision, Evaluation, Source, bucket};
pub use flag::{Flag, FlagSet, StickyPolicy};
pub use store::{Selection, Store};
