//! Where a store lives: an SQLite path or a PostgreSQL URL, as `--db` and `$FLAGSTORE_DB`
//! give it.

use std::ffi::OsStr;
use std::path::PathBuf;

use super::redacted_url;

/// Where a store lives: `--db` or `$FLAGSTORE_DB`, a `postgres://` or `postgresql://` URL, or
/// else the path of an SQLite file.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Location {
    pub fn parse(text: &OsStr) -> Location {
        match text.to_str() {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Location::Postgres(url.to_string())
            }
            _ => Location::Sqlite(PathBuf::from(text)),
        }
    }
}

impl std::fmt::Display for Location {
    /// The location as messages name it: never a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => f.write_str(&redacted_url(url)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_urls_select_postgres_and_anything_else_is_a_path() {
        for url in [
            "postgres://u@h/db",
            "postgresql://u:secret@h:5433/db?sslmode=disable",
        ] {
            assert_eq!(
                Location::parse(OsStr::new(url)),
                Location::Postgres(url.to_string())
            );
        }
        for path in [
            "flags.db",
            "postgres",
            "./postgres://x",
            "/srv/postgresql:/x.db",
        ] {
            assert_eq!(
                Location::parse(OsStr::new(path)),
                Location::Sqlite(PathBuf::from(path))
            );
        }
        let location = Location::parse(OsStr::new("postgres://u:secret@h:5433/db"));
        assert_eq!(location.to_string(), "postgres://u@h:5433/db");
    }
}
