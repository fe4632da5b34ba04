//! The context key of an OFREP evaluation request: `context.targetingKey` of its JSON body, or
//! the OFREP error code and details that refuse it.
//!
//! Every request is read twice at most. First as the usual shape, without building a
//! `serde_json::Value` (for a context of five attributes its maps take four times as long as
//! this reading: 880-1,000 ns against 200-230): an object whose `context` is an object with a
//! string `targetingKey`, every other value in it read in full and dropped. Anything else
//! (not JSON, another shape, a key that is not a string, an escaped field name) goes through
//! the full reading as a `Value`, which alone decides what is refused and how; so the first
//! reading may only ever agree with it, and a test holds it to that.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

pub(super) fn targeting_key(body: &[u8]) -> Result<String, (&'static str, String)> {
    let mut json = serde_json::Deserializer::from_slice(body);
    match usual_shape()
        .deserialize(&mut json)
        .and_then(|read| json.end().map(|()| read))
    {
        Ok(Some(Some(Text(key)))) if !key.is_empty() => checked_key(&key),
        _ => targeting_key_of_any_body(body),
    }
}

/// `context.targetingKey` of a body of the usual shape: an object whose `context` is an
/// object (`None` inside if it has no `targetingKey`), whose `targetingKey` is a string.
fn usual_shape<'de>() -> LastField<LastField<PhantomData<Text<'de>>>> {
    LastField {
        name: "context",
        value: LastField {
            name: "targetingKey",
            value: PhantomData,
        },
    }
}

fn checked_key(key: &str) -> Result<String, (&'static str, String)> {
    match crate::contexts::key_problem(key) {
        None => Ok(key.to_string()),
        Some(why) => Err(("INVALID_CONTEXT", format!("context.targetingKey: {why}"))),
    }
}

fn targeting_key_of_any_body(body: &[u8]) -> Result<String, (&'static str, String)> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| ("PARSE_ERROR", format!("the body is not JSON: {e}")))?;
    match request
        .get("context")
        .and_then(|context| context.get("targetingKey"))
    {
        // An empty key is a missing one: an unset variable in a client would otherwise put
        // every caller on one sticky decision.
        None | Some(Value::Null) => Err((
            "TARGETING_KEY_MISSING",
            "context.targetingKey is required: it is the context key decisions stick to"
                .to_string(),
        )),
        Some(Value::String(key)) if key.is_empty() => Err((
            "TARGETING_KEY_MISSING",
            "context.targetingKey is empty: it is the context key decisions stick to".to_string(),
        )),
        Some(Value::String(key)) => checked_key(key),
        Some(other) => Err((
            "INVALID_CONTEXT",
            format!("context.targetingKey must be a string, not {other}"),
        )),
    }
}

/// Reads an object: its value under `name` with `value` (the last one if the name repeats, as
/// in a `Value`), every other value checked; `None` if the name is absent. Anything but an
/// object fails, and so does a name with an escape in it.
#[derive(Clone, Copy)]
struct LastField<S> {
    name: &'static str,
    value: S,
}

impl<'de, S: DeserializeSeed<'de> + Copy> DeserializeSeed<'de> for LastField<S> {
    type Value = Option<S::Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, S: DeserializeSeed<'de> + Copy> Visitor<'de> for LastField<S> {
    type Value = Option<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an object with {:?}", self.name)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(field) = map.next_key::<&str>()? {
            if field == self.name {
                found = Some(map.next_value_seed(self.value)?);
            } else {
                map.next_value::<Checked>()?;
            }
        }
        Ok(found)
    }
}

/// A JSON string, borrowed from the body when it has no escapes; anything else fails.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Str;
        impl<'de> Visitor<'de> for Str {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(text)))
            }

            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
        }
        deserializer.deserialize_str(Str)
    }
}

/// Any JSON value, read as fully as a `Value` is (every string decoded, every number
/// converted) and dropped. serde's own skipping (`IgnoredAny`) does not decode what it skips,
/// so it would let through half a surrogate pair or a number out of range that the full
/// reading refuses.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Any;
        impl<'de> Visitor<'de> for Any {
            type Value = Checked;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
                Ok(Checked)
            }

            fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
                Ok(Checked)
            }

            fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
                Ok(Checked)
            }

            fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
                Ok(Checked)
            }

            fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
                Ok(Checked)
            }

            fn visit_unit<E>(self) -> Result<Checked, E> {
                Ok(Checked)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Checked, A::Error> {
                while items.next_element::<Checked>()?.is_some() {}
                Ok(Checked)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Checked, A::Error> {
                while entries.next_entry::<Checked, Checked>()?.is_some() {}
                Ok(Checked)
            }
        }
        deserializer.deserialize_any(Any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_targeting_key_is_required_and_must_be_text() {
        for (body, key) in [
            (
                &br#"{"context": {"targetingKey": "t:1", "plan": "pro"}}"#[..],
                "t:1",
            ),
            (
                br#"{"flag": 1, "context": {"targetingKey": "t\u003a1"}}"#,
                "t:1",
            ),
            // A repeated name: the last one counts, as a JSON object read whole has it.
            (
                br#"{"context": {"targetingKey": "a", "targetingKey": "b"}}"#,
                "b",
            ),
            (
                br#"{"context": {"targetingKey": "a"}, "context": {"targetingKey": "c"}}"#,
                "c",
            ),
        ] {
            assert_eq!(targeting_key(body), Ok(key.to_string()), "{body:?}");
        }
        for (body, code) in [
            (&b"not json"[..], "PARSE_ERROR"),
            // Not UTF-8, a bad escape, half a surrogate pair, a number out of range, each in a
            // field nobody reads: still not JSON.
            (
                b"{\"context\": {\"targetingKey\": \"a\", \"plan\": \"\xff\"}}",
                "PARSE_ERROR",
            ),
            (
                br#"{"context": {"targetingKey": "a", "plan": "\q"}}"#,
                "PARSE_ERROR",
            ),
            (
                br#"{"context": {"targetingKey": "a", "plan": "\ud800"}}"#,
                "PARSE_ERROR",
            ),
            (
                br#"{"context": {"targetingKey": "a"}, "n": 1e400}"#,
                "PARSE_ERROR",
            ),
            (b"", "PARSE_ERROR"),
            (b"{}", "TARGETING_KEY_MISSING"),
            (
                br#"{"context": {"targetingKey": ""}}"#,
                "TARGETING_KEY_MISSING",
            ),
            (br#"{"context": {}}"#, "TARGETING_KEY_MISSING"),
            (br#"{"context": 5}"#, "TARGETING_KEY_MISSING"),
            (
                br#"[{"context": {"targetingKey": "a"}}]"#,
                "TARGETING_KEY_MISSING",
            ),
            (
                br#"{"context": {"targetingKey": "a", "targetingKey": null}}"#,
                "TARGETING_KEY_MISSING",
            ),
            (
                br#"{"context": {"targetingKey": "a", "targetingKey": 7}}"#,
                "INVALID_CONTEXT",
            ),
            (br#"{"context": {"targetingKey": 7}}"#, "INVALID_CONTEXT"),
            (
                br#"{"context": {"targetingKey": "a\u0000b"}}"#,
                "INVALID_CONTEXT",
            ),
            (
                format!(
                    r#"{{"context": {{"targetingKey": "{}"}}}}"#,
                    "k".repeat(1025)
                )
                .into_bytes()
                .leak(),
                "INVALID_CONTEXT",
            ),
        ] {
            assert_eq!(
                targeting_key(body).map_err(|(code, _)| code),
                Err(code),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// Attributes of every JSON type, some repeated, for a context or a list.
    const ATTRIBUTES: &str = r#""plan": "pro", "n": 1, "f": -1.5e-3, "big": 18446744073709551616,
        "small": -9223372036854775809, "b": true, "z": null, "plan": "\u00e9",
        "list": [1, "a", {"x": [null, {}]}], "obj": {"k": "v", "k": 2}"#;
    const ATTRIBUTES_AS_LIST: &str = r#"[{"plan": "pro"}, [1e300, -0, "\ud83d\ude00"], []]"#;

    /// A context with attributes, the shape OpenFeature's clients send, is read the short way.
    #[test]
    fn a_context_with_attributes_takes_the_typed_reading() {
        let body = format!(r#"{{"context": {{{ATTRIBUTES}, "targetingKey": "t:1"}}}}"#);
        let read = usual_shape().deserialize(&mut serde_json::Deserializer::from_str(&body));
        assert!(
            matches!(&read, Ok(Some(Some(Text(key)))) if key == "t:1"),
            "{body}"
        );
    }

    /// The typed reading is only a shortcut: for any body, the answer is the full reading's.
    #[test]
    fn the_typed_reading_never_answers_otherwise_than_the_full_one() {
        let keys = [
            "t:1",
            "",
            "a\\u0000b",
            "\\u00e9t\\u00e9",
            "\\ud83d\\ude00",
            "\\ud800",
            "x\\q",
        ];
        let mut bodies = vec![
            b"".to_vec(),
            b"null".to_vec(),
            b"{\"context\": {\"targetingKey\": \"\xff\"}}".to_vec(),
            format!(
                r#"{{"context": {{"targetingKey": "{}"}}}}"#,
                "k".repeat(1025)
            )
            .into_bytes(),
        ];
        for key in keys {
            for body in [
                format!(r#"{{"context": {{"targetingKey": "{key}"}}}}"#),
                format!(r#"{{"context":{{"targetingKey":"{key}"}}}} "#),
                format!(r#"{{"context": {{"targetingKey": "{key}"}}}} trailing"#),
                format!(r#"{{"context": {{"targetingKey": "{key}", "plan": "pro"}}}}"#),
                format!(r#"{{"context": {{"targetingKey": "{key}", "targetingKey": "b"}}}}"#),
                format!(r#"{{"context": {{"targetingKey": "b", "targetingKey": "{key}"}}}}"#),
                format!(r#"{{"context": {{"targetingKey": "{key}"}}, "n": 1e400}}"#),
                format!(r#"{{"context": {{"targetingKey": "{key}"}}, "context": null}}"#),
                format!(r#"{{"context": null, "context": {{"targetingKey": "{key}"}}}}"#),
                format!(r#"[{{"context": {{"targetingKey": "{key}"}}}}]"#),
                format!(r#"{{"context": {{"targetingKey": ["{key}"]}}}}"#),
                format!(r#"{{"cont\u0065xt": {{"targetingKey": "{key}"}}}}"#),
                format!(r#"{{"context": {{"targetingKe\u0079": "{key}"}}}}"#),
                format!(r#"{{"context": {{{ATTRIBUTES}, "targetingKey": "{key}"}}}}"#),
                format!(
                    r#"{{"flags": {ATTRIBUTES_AS_LIST}, "context": {{"targetingKey": "{key}"}}}}"#
                ),
            ] {
                bodies.push(body.into_bytes());
            }
            // Each attribute that the full reading refuses, beside a good key.
            for bad in [
                r#""a": "\ud800""#,
                r#""a": [1, {"b": 1e400}]"#,
                r#""\udc00": 1"#,
                r#""a": "x\q""#,
                "\"a\": \"\u{1}\"",
                r#""a": 01"#,
                r#""a": [1,]"#,
                r#""a": tru"#,
            ] {
                bodies.push(
                    format!(r#"{{"context": {{"targetingKey": "{key}", {bad}}}}}"#).into_bytes(),
                );
            }
        }
        // Nesting as deep as serde_json allows, and one level deeper.
        for depth in [126, 127, 128] {
            bodies.push(
                format!(
                    r#"{{"context": {{"targetingKey": "t", "a": {}{}}}}}"#,
                    "[".repeat(depth),
                    "]".repeat(depth)
                )
                .into_bytes(),
            );
        }
        for body in &bodies {
            assert_eq!(
                targeting_key(body),
                targeting_key_of_any_body(body),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
