//! The JSON file format shared with the Python prototype:
//! `{"flags": [{"name", "enabled"?, "rollout_pct"?, "requires"?, "sticky"?, "stale_exempt"?}],
//! "context_key"?}`.

use std::collections::HashMap;
use std::io::Read;

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result, shortened};
use crate::flag::{Flag, FlagSet, StickyPolicy, validate_name};

/// The prototype's `run` job evaluates for this key when a file names none.
pub const DEFAULT_CONTEXT_KEY: &str = "default";

/// A parsed flags file. Unknown fields are refused: a misspelt `"rollout"` silently falling back
/// to a 100% rollout is the kind of mistake this tool exists to prevent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Document {
    pub flags: Vec<Flag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_key: Option<String>,
}

impl Document {
    /// Parses and checks a file's own content (field types, names, percentages, duplicates);
    /// whether its `requires` resolve depends on the store it is imported into. Errors name the
    /// entry, the flag and the field in words, e.g. `flags[1] ("enrich"): rollout_pct must be
    /// a number from 0 to 100, got the string "50"`. A leading UTF-8 byte order mark is ignored.
    pub fn parse(text: &str, path: &str) -> Result<Document> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let value: Value = serde_json::from_str(text).map_err(|e| malformed(&e, path))?;
        let bad = |at: &str, why: String| Error::BadDocument {
            path: path.to_string(),
            at: at.to_string(),
            why,
        };
        let Value::Object(top) = value else {
            return Err(bad(
                "the file",
                format!(
                    "must be an object like {{\"flags\": [...]}}, got {}",
                    describe(&value)
                ),
            ));
        };
        let mut flags = None;
        let mut context_key = None;
        for (field, value) in top {
            match field.as_str() {
                "flags" => flags = Some(value),
                "context_key" => match value {
                    Value::String(key) => context_key = Some(key),
                    other => {
                        return Err(bad(
                            "context_key",
                            format!("must be a string, got {}", describe(&other)),
                        ));
                    }
                },
                _ => {
                    return Err(bad(
                        &format!("{field:?}"),
                        "is not a field of a flags file (expected flags and context_key)"
                            .to_string(),
                    ));
                }
            }
        }
        let entries = match flags {
            Some(Value::Array(entries)) => entries,
            Some(other) => {
                return Err(bad(
                    "flags",
                    format!("must be a list of flag objects, got {}", describe(&other)),
                ));
            }
            None => return Err(bad("the file", "has no \"flags\" list".to_string())),
        };
        let mut parsed = Vec::with_capacity(entries.len());
        let mut first_index: HashMap<String, usize> = HashMap::new();
        for (index, entry) in entries.into_iter().enumerate() {
            let flag = parse_flag(index, entry).map_err(|(at, why)| bad(&at, why))?;
            if let Some(first) = first_index.insert(flag.name.clone(), index) {
                return Err(Error::DuplicateName {
                    name: flag.name,
                    first,
                    second: index,
                }
                .in_file(path));
            }
            parsed.push(flag);
        }
        Ok(Document {
            flags: parsed,
            context_key,
        })
    }

    /// Reads and parses `path`, or standard input when it is `-`.
    pub fn read(path: &str) -> Result<Document> {
        Document::parse(&read_input(path)?, display_path(path))
    }

    /// The export form: every flag with every field explicit, in definition order.
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

/// The largest flags file taken. Names are at most 128 characters and a definition a few
/// hundred bytes, so this is hundreds of thousands of flags; a larger file is a path given by
/// mistake (the database, a device), refused before it is read into memory whole.
const MAX_DOCUMENT_BYTES: u64 = 64 << 20;

/// The whole text of `path`, or of standard input when it is `-`.
pub fn read_input(path: &str) -> Result<String> {
    let read_error = |source| Error::Read {
        path: display_path(path).to_string(),
        source,
    };
    let input: Box<dyn Read> = if path == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).map_err(read_error)?)
    };
    let mut text = String::new();
    input
        .take(MAX_DOCUMENT_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_DOCUMENT_BYTES {
        return Err(read_error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "larger than {} MiB: not a flags file",
                MAX_DOCUMENT_BYTES >> 20
            ),
        )));
    }
    Ok(text)
}

/// One entry of the `flags` list, or (where, why) it is refused.
fn parse_flag(index: usize, entry: Value) -> std::result::Result<Flag, (String, String)> {
    let entry_at = format!("flags[{index}]");
    let Value::Object(fields) = entry else {
        return Err((
            entry_at,
            format!(
                "a flag must be an object like {{\"name\": \"ingest\"}}, got {}",
                describe(&entry)
            ),
        ));
    };
    let name = match fields.get("name") {
        Some(Value::String(name)) => name.clone(),
        Some(other) => {
            return Err((
                entry_at,
                format!("name must be a string, got {}", describe(other)),
            ));
        }
        None => return Err((entry_at, "has no name".to_string())),
    };
    validate_name(&name).map_err(|e| (entry_at.clone(), e.to_string()))?;
    let at = format!("{entry_at} ({name:?})");
    let mut flag = Flag::new(name);
    for (field, value) in fields {
        let wrong = |expected: &str| {
            (
                at.clone(),
                format!("{field} must be {expected}, got {}", describe(&value)),
            )
        };
        match field.as_str() {
            "name" => {}
            "enabled" => flag.enabled = value.as_bool().ok_or_else(|| wrong("true or false"))?,
            "rollout_pct" => {
                flag.rollout_pct = value
                    .as_f64()
                    .filter(|pct| (0.0..=100.0).contains(pct))
                    .ok_or_else(|| wrong("a number from 0 to 100"))?;
            }
            "requires" => {
                let names = value.as_array().and_then(|list| {
                    list.iter()
                        .map(|name| name.as_str().map(str::to_string))
                        .collect::<Option<Vec<String>>>()
                });
                flag.requires = names.ok_or_else(|| wrong("a list of flag names"))?;
            }
            "sticky" => {
                flag.sticky = value
                    .as_str()
                    .and_then(|policy| policy.parse::<StickyPolicy>().ok())
                    .ok_or_else(|| wrong("one of \"on_only\", \"all\" or \"none\""))?;
            }
            "stale_exempt" => {
                flag.stale_exempt = value.as_bool().ok_or_else(|| wrong("true or false"))?;
            }
            _ => {
                return Err((
                    at,
                    format!(
                        "{field:?} is not a field of a flag (expected name, enabled, \
                         rollout_pct, requires, sticky and stale_exempt)"
                    ),
                ));
            }
        }
    }
    Ok(flag)
}

/// A JSON value as an error message names what was found instead.
fn describe(value: &Value) -> String {
    let shown = |value: &Value| shortened(&value.to_string(), 40);
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(_) => format!("the boolean {value}"),
        Value::Number(_) => format!("the number {value}"),
        Value::String(_) => format!("the string {}", shown(value)),
        Value::Array(_) => format!("the list {}", shown(value)),
        Value::Object(_) => format!("the object {}", shown(value)),
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
    fn bad_fields_are_named_in_plain_words() {
        for (text, expected) in [
            (r#"{"flags": [{"enabled": true}]}"#, "flags[0]: has no name"),
            (
                r#"{"flags": [{"name": "a"}, {"name": ""}]}"#,
                "flags[1]: invalid flag name \"\": it is empty",
            ),
            (
                r#"{"flags": [{"name": "a"}, {"name": "enrich", "rollout_pct": "50"}]}"#,
                "flags[1] (\"enrich\"): rollout_pct must be a number from 0 to 100, got the string \"50\"",
            ),
            (
                r#"{"flags": [{"name": "a", "rollout_pct": 101}]}"#,
                "flags[0] (\"a\"): rollout_pct must be a number from 0 to 100, got the number 101",
            ),
            (
                r#"{"flags": [{"name": "a", "enabled": "yes"}]}"#,
                "flags[0] (\"a\"): enabled must be true or false, got the string \"yes\"",
            ),
            (
                r#"{"flags": [{"name": "a", "requires": "b"}]}"#,
                "flags[0] (\"a\"): requires must be a list of flag names, got the string \"b\"",
            ),
            (
                r#"{"flags": [{"name": "a", "requires": ["b", 3]}]}"#,
                "flags[0] (\"a\"): requires must be a list of flag names, got the list [\"b\",3]",
            ),
            (
                r#"{"flags": [{"name": "a", "sticky": "forever"}]}"#,
                "flags[0] (\"a\"): sticky must be one of \"on_only\", \"all\" or \"none\", got the string \"forever\"",
            ),
            (
                r#"{"flags": [{"name": "a", "rollout": 5}]}"#,
                "flags[0] (\"a\"): \"rollout\" is not a field of a flag (expected name, enabled, rollout_pct, requires, sticky and stale_exempt)",
            ),
            (
                r#"{"flags": [["a", true, 50]]}"#,
                "flags[0]: a flag must be an object like {\"name\": \"ingest\"}, got the list [\"a\",true,50]",
            ),
            (
                r#"[{"name": "a"}]"#,
                "the file: must be an object like {\"flags\": [...]}, got the list [{\"name\":\"a\"}]",
            ),
            (
                r#"{"flags": {"name": "a"}}"#,
                "flags: must be a list of flag objects, got the object {\"name\":\"a\"}",
            ),
            (r#"{}"#, "the file: has no \"flags\" list"),
            (
                r#"{"flags": [], "context_key": 7}"#,
                "context_key: must be a string, got the number 7",
            ),
            (
                r#"{"flags": [], "flag": []}"#,
                "\"flag\": is not a field of a flags file (expected flags and context_key)",
            ),
        ] {
            assert_eq!(error(text), format!("f.json: {expected}"), "{text}");
        }
    }

    #[test]
    fn a_leading_byte_order_mark_is_ignored() {
        let doc = Document::parse("\u{feff}{\"flags\": [{\"name\": \"a\"}]}", "f.json").unwrap();
        assert_eq!(doc.flags, [Flag::new("a")]);
    }

    #[test]
    fn duplicate_names_name_both_entries() {
        assert_eq!(
            error(r#"{"flags": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}"#),
            "f.json: flag \"a\" appears twice (flags[0] and flags[2])"
        );
    }

    #[test]
    fn export_keeps_definition_order_is_explicit_and_reparses_to_the_same_flags() {
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
      "name": "z",
      "enabled": true,
      "rollout_pct": 100,
      "requires": [
        "a"
      ],
      "sticky": "on_only"
    },
    {
      "name": "a",
      "enabled": true,
      "rollout_pct": 0.5,
      "requires": [],
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
