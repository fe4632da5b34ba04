//! The JSON file format shared with the Python prototype:
//! `{"flags": [{"name", "enabled"?, "rollout_pct"?, "requires"?, "sticky"?}], "context_key"?}`.

use std::collections::HashMap;
use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::flag::{Flag, FlagSet, validate_name, validate_rollout};

/// The prototype's `run` job evaluates for this key when a file names none.
pub const DEFAULT_CONTEXT_KEY: &str = "default";

/// A parsed flags file. Unknown fields are refused: a misspelt `"rollout"` silently falling back
/// to a 100% rollout is the kind of mistake this tool exists to prevent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    pub flags: Vec<Flag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_key: Option<String>,
}

impl Document {
    /// Parses and checks a file's own content (names, percentages, duplicates); whether its
    /// `requires` resolve depends on the store it is imported into.
    pub fn parse(text: &str, path: &str) -> Result<Document> {
        let document: Document = serde_json::from_str(text).map_err(|e| malformed(&e, path))?;
        let mut first_entry: HashMap<&str, usize> = HashMap::new();
        for (index, flag) in document.flags.iter().enumerate() {
            let entry = index + 1;
            validate_name(&flag.name)
                .and_then(|()| validate_rollout(&flag.name, flag.rollout_pct))
                .map_err(|e| e.in_file(&format!("{path}: entry {entry}")))?;
            if let Some(first) = first_entry.insert(&flag.name, entry) {
                return Err(Error::DuplicateName {
                    name: flag.name.clone(),
                    first,
                    second: entry,
                }
                .in_file(path));
            }
        }
        Ok(document)
    }

    /// Reads and parses `path`, or standard input when it is `-`.
    pub fn read(path: &str) -> Result<Document> {
        Document::parse(&read_input(path)?, display_path(path))
    }

    /// The export form: every flag with every field explicit, in name order.
    pub fn from_flags(flags: &FlagSet) -> Document {
        Document {
            flags: flags.iter().cloned().collect(),
            context_key: None,
        }
    }

    /// Pretty-printed with a final newline, stable for the same flags, so that
    /// export -> import -> export is byte-identical and diffs of exports are readable.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a document always serializes");
        text.push('\n');
        text
    }

    /// The flags as a set with canonical `requires`, as they would be stored.
    pub fn flag_set(&self) -> FlagSet {
        self.flags.iter().cloned().collect()
    }
}

/// How a path is named in messages: `-` reads better as "stdin".
pub fn display_path(path: &str) -> &str {
    if path == "-" { "stdin" } else { path }
}

/// The whole text of `path`, or of standard input when it is `-`.
pub fn read_input(path: &str) -> Result<String> {
    let read_error = |source| Error::Read {
        path: display_path(path).to_string(),
        source,
    };
    if path == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(read_error)?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).map_err(read_error)
    }
}

fn malformed(error: &serde_json::Error, path: &str) -> Error {
    // serde_json appends " at line L column C" to its message; the position is reported
    // separately so every file error reads "FILE: line L, column C: what".
    let message = error.to_string();
    let message = match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message,
    };
    Error::MalformedJson {
        path: path.to_string(),
        line: error.line(),
        column: error.column(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flag::StickyPolicy;

    #[test]
    fn defaults_fill_missing_fields() {
        let doc = Document::parse(r#"{"flags": [{"name": "ingest"}]}"#, "f.json").unwrap();
        assert_eq!(doc.flags, [Flag::new("ingest")]);
        assert_eq!(doc.context_key, None);
    }

    #[test]
    fn every_field_is_read() {
        let doc = Document::parse(
            r#"{"flags": [{"name": "x", "enabled": false, "rollout_pct": 12.5,
                "requires": ["b", "a"], "sticky": "all"}], "context_key": "tenant:acme"}"#,
            "f.json",
        )
        .unwrap();
        let flag = &doc.flags[0];
        assert!(!flag.enabled);
        assert_eq!(flag.rollout_pct, 12.5);
        assert_eq!(flag.requires, ["b", "a"]);
        assert_eq!(flag.sticky, StickyPolicy::All);
        assert_eq!(doc.context_key.as_deref(), Some("tenant:acme"));
    }

    fn error(text: &str) -> String {
        Document::parse(text, "f.json").unwrap_err().to_string()
    }

    #[test]
    fn malformed_json_names_file_line_and_column() {
        assert_eq!(
            error("{\"flags\": [\n  {\"name\": \"a\",}\n]}"),
            "f.json: line 2, column 16: trailing comma"
        );
    }

    #[test]
    fn bad_fields_are_named() {
        assert!(error(r#"{"flags": [{"enabled": true}]}"#).contains("missing field `name`"));
        assert_eq!(
            error(r#"{"flags": [{"name": "a"}, {"name": ""}]}"#),
            "f.json: entry 2: invalid flag name \"\": it is empty"
        );
        assert!(
            error(r#"{"flags": [{"name": "a", "rollout_pct": "50"}]}"#)
                .contains("invalid type: string \"50\", expected f64")
        );
        assert_eq!(
            error(r#"{"flags": [{"name": "a", "rollout_pct": 101}]}"#),
            "f.json: entry 1: flag \"a\": rollout_pct 101 is outside 0-100"
        );
        assert!(
            error(r#"{"flags": [{"name": "a", "sticky": "forever"}]}"#)
                .contains("unknown variant `forever`")
        );
        assert!(error(r#"{"flags": [{"name": "a", "rollout": 5}]}"#).contains("unknown field"));
    }

    #[test]
    fn duplicate_names_name_both_entries() {
        assert_eq!(
            error(r#"{"flags": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}"#),
            "f.json: flag \"a\" appears twice (entries 1 and 3)"
        );
    }

    #[test]
    fn export_is_sorted_explicit_and_reparses_to_the_same_flags() {
        let doc = Document::parse(
            r#"{"flags": [{"name": "z", "requires": ["a"]}, {"name": "a", "rollout_pct": 0.5}]}"#,
            "f.json",
        )
        .unwrap();
        let exported = Document::from_flags(&doc.flag_set()).to_json();
        assert_eq!(
            exported,
            r#"{
  "flags": [
    {
      "name": "a",
      "enabled": true,
      "rollout_pct": 0.5,
      "requires": [],
      "sticky": "on_only"
    },
    {
      "name": "z",
      "enabled": true,
      "rollout_pct": 100,
      "requires": [
        "a"
      ],
      "sticky": "on_only"
    }
  ]
}
"#
        );
        let again = Document::parse(&exported, "export.json").unwrap();
        assert_eq!(Document::from_flags(&again.flag_set()).to_json(), exported);
    }
}
