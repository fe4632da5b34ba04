//! What a database holds as far as flagstore is concerned, read the same way by both backends
//! (each counts its tables and reads refinery's history its own way).

use crate::error::{Error, Result};

/// What a database holds, as far as flagstore is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SchemaState {
    /// No tables, or only the empty history table of a first migration that was interrupted
    /// (refinery creates it in a transaction of its own before the schema's).
    Empty,
    /// Migrated, to this version, by an older flagstore.
    Older(i64),
    Current,
    /// Migrated by a newer flagstore, past the `supported` version.
    Newer {
        found: i64,
        supported: i64,
    },
    /// Some other application's tables: adding ours to them would be a surprise.
    Foreign,
}

impl SchemaState {
    /// From the number of tables and the newest version in refinery's history table, if there
    /// is one, and the newest version this build knows for the backend.
    pub(super) fn from_tables(
        tables: i64,
        history: Option<Option<i64>>,
        latest: i64,
    ) -> SchemaState {
        match history {
            None if tables == 0 => SchemaState::Empty,
            None => SchemaState::Foreign,
            Some(None) if tables == 1 => SchemaState::Empty,
            Some(None) => SchemaState::Foreign,
            Some(Some(v)) if v < latest => SchemaState::Older(v),
            Some(Some(v)) if v == latest => SchemaState::Current,
            Some(Some(found)) => SchemaState::Newer {
                found,
                supported: latest,
            },
        }
    }

    pub(super) fn check(self, path: &str, kind: &str) -> Result<()> {
        match self {
            SchemaState::Newer { found, supported } => Err(Error::NewerSchema {
                path: path.to_string(),
                found,
                supported,
            }),
            SchemaState::Foreign => Err(Error::NotADatabase {
                path: path.to_string(),
                detail: format!("it is {kind} with tables of its own"),
            }),
            _ => Ok(()),
        }
    }
}
