//! Output formats written for every key of a batch, shared by the CLI and the benchmark.

use std::io::{self, Write};

use crate::eval::Evaluation;

/// Writes one JSON Lines record `{"context":KEY,"flags":{"flag":bool,...}}`, flags in the
/// order asked (with --all, the store's order; a flag asked for twice appears once, where it
/// was first asked). Written by hand because it runs once per key of a batch and a generic
/// JSON value would cost more than the evaluation.
pub fn write_batch_line(
    out: &mut impl Write,
    key: &str,
    evaluations: &[Evaluation],
) -> io::Result<()> {
    out.write_all(b"{\"context\":")?;
    serde_json::to_writer(&mut *out, key)?;
    out.write_all(b",\"flags\":{")?;
    for (i, evaluation) in evaluations.iter().enumerate() {
        // A handful of flags: a scan of those before costs less than a set per key.
        if evaluations[..i].iter().any(|e| e.flag == evaluation.flag) {
            continue;
        }
        if i > 0 {
            out.write_all(b",")?;
        }
        serde_json::to_writer(&mut *out, &evaluation.flag)?;
        let value: &[u8] = if evaluation.decision.enabled {
            b":true"
        } else {
            b":false"
        };
        out.write_all(value)?;
    }
    out.write_all(b"}}\n")
}

/// A percentage as JSON the way every output writes it: whole numbers without a fraction
/// (`50`, not `50.0`), as in the export format and as Rust prints them in tables.
pub fn percentage(pct: f64) -> serde_json::Value {
    if pct.fract() == 0.0 && pct.is_finite() {
        serde_json::Value::from(pct as u64)
    } else {
        serde_json::Value::from(pct)
    }
}

/// [`percentage`] for a `#[serde(serialize_with)]` field.
pub fn serialize_percentage<S: serde::Serializer>(
    pct: &f64,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&percentage(*pct), serializer)
}

/// `text` made safe for a terminal: control characters, bidirectional-text overrides and
/// zero-width characters are shown as escapes (`\n`, `\u{1b}`, `\u{202e}`, `\u{200b}`), so a
/// context key cannot forge a row, recolour the screen or pass for another key. A backslash is doubled, so an escape is never ambiguous.
pub fn escaped(text: &str) -> String {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
    };
    if !text.chars().any(|c| unsafe_char(c) || c == '\\') {
        return text.to_string();
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => shown.push_str("\\\\"),
            '\n' => shown.push_str("\\n"),
            '\r' => shown.push_str("\\r"),
            '\t' => shown.push_str("\\t"),
            '\0' => shown.push_str("\\0"),
            c if unsafe_char(c) => shown.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => shown.push(c),
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_ordinary_text_alone_and_shows_controls() {
        assert_eq!(escaped("tenant:acme é 中"), "tenant:acme é 中");
        assert_eq!(
            escaped("a\nb\u{1b}[31m\0\u{202e}c\\"),
            "a\\nb\\u{1b}[31m\\0\\u{202e}c\\\\"
        );
        assert_eq!(
            escaped("in\u{200b}gest\u{feff}"),
            "in\\u{200b}gest\\u{feff}"
        );
    }
}
