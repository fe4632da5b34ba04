//! Output formats written for every key of a batch, shared by the CLI and the benchmark.

use std::io::{self, Write};

use crate::eval::Evaluation;

/// Writes one JSON Lines record `{"context":KEY,"flags":{"flag":bool,...}}`, flags in name
/// order (a flag asked for twice appears once). Written by hand because it runs once per key
/// of a batch and a generic JSON value would cost more than the evaluation.
pub fn write_batch_line(
    out: &mut impl Write,
    key: &str,
    evaluations: &[Evaluation],
) -> io::Result<()> {
    let mut ordered: Vec<&Evaluation> = evaluations.iter().collect();
    ordered.sort_by(|a, b| a.flag.cmp(&b.flag));
    ordered.dedup_by(|a, b| a.flag == b.flag);
    out.write_all(b"{\"context\":")?;
    serde_json::to_writer(&mut *out, key)?;
    out.write_all(b",\"flags\":{")?;
    for (i, evaluation) in ordered.iter().enumerate() {
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
