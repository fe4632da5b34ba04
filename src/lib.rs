//! flagstore: feature flags for data pipelines, kept in one SQLite file or in PostgreSQL, with
//! sticky per-context assignments and an append-only, hash-chained audit trail.
//!
//! The evaluator ([`eval`]) is pure; all SQL lives in [`store`]; [`cli`] is the command-line
//! layer the `flagstore` binary runs.

pub mod audit;
pub mod bench;
pub mod change;
pub mod cli;
pub mod contexts;
pub mod document;
pub mod error;
pub mod eval;
pub mod explain;
pub mod file;
pub mod flag;
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
