//! How the compact audit rows (SQLite's schema 14, PostgreSQL's 16) store a row's time and
//! hashes, and how a reader shows them again as the view `audit_log` does: written once for
//! both backends, so that what each stores and shows cannot drift apart.

use crate::audit::AuditRow;
use crate::error::{Error, Result};

/// `audit_rows.ts_ms` (and SQLite's `assignment_rows.assigned_at`): the milliseconds a time in
/// flagstore's form stands for, which the views write back as the same text; any other text
/// as it is (a clock set before 1970, a year past 9999).
#[derive(Clone)]
pub(super) enum StoredTime<'a> {
    Millis(i64),
    Text(&'a str),
}

impl<'a> StoredTime<'a> {
    /// Each of `times`, parsed once for a run of the same time (a transaction's rows share
    /// theirs).
    pub(super) fn of_each(times: impl Iterator<Item = &'a str>) -> Vec<StoredTime<'a>> {
        let mut last: Option<(&str, StoredTime)> = None;
        times
            .map(|text| match &last {
                Some((previous, stored)) if *previous == text => stored.clone(),
                _ => last.insert((text, StoredTime::of(text))).1.clone(),
            })
            .collect()
    }

    /// The milliseconds, for a backend that keeps them and the text in two columns.
    pub(super) fn millis(&self) -> Option<i64> {
        match self {
            StoredTime::Millis(ms) => Some(*ms),
            StoredTime::Text(_) => None,
        }
    }

    /// The text kept as it is, for the same.
    pub(super) fn text(&self) -> Option<&'a str> {
        match self {
            StoredTime::Millis(_) => None,
            StoredTime::Text(text) => Some(text),
        }
    }

    fn of(ts: &'a str) -> StoredTime<'a> {
        match chrono::DateTime::parse_from_rfc3339(ts) {
            Ok(instant)
                if instant.timestamp_millis() >= 0
                    && crate::audit::timestamp(instant.to_utc()) == ts =>
            {
                StoredTime::Millis(instant.timestamp_millis())
            }
            _ => StoredTime::Text(ts),
        }
    }
}

/// `hash`: the 32 bytes 64 lowercase hex digits spell, which the view writes back as them;
/// anything else (a store edited by hand) as its text.
pub(super) enum StoredHash<'a> {
    Bytes(Vec<u8>),
    Text(&'a str),
}

impl<'a> StoredHash<'a> {
    pub(super) fn of(hash: &'a str) -> StoredHash<'a> {
        let lowercase_hex = |digit: u8| matches!(digit, b'0'..=b'9' | b'a'..=b'f');
        match crate::hex::decode(hash) {
            Some(bytes) if bytes.len() == 32 && hash.bytes().all(lowercase_hex) => {
                StoredHash::Bytes(bytes)
            }
            _ => StoredHash::Text(hash),
        }
    }

    /// The bytes of a column that holds both forms as bytes (PostgreSQL's BYTEA): a text
    /// hash is never 32 bytes long, as a hash in text is 64 characters.
    pub(super) fn into_bytes(self) -> Vec<u8> {
        match self {
            StoredHash::Bytes(bytes) => bytes,
            StoredHash::Text(text) => text.as_bytes().to_vec(),
        }
    }
}

/// Audit row `id`'s hash stored as bytes, as the view shows it (see
/// [`StoredHash::into_bytes`]); the row named where the bytes are neither a hash nor UTF-8.
pub(super) fn shown_hash(id: i64, bytes: &[u8]) -> Result<String> {
    match bytes.len() {
        32 => Ok(crate::hex::lowercase(bytes)),
        _ => {
            std::str::from_utf8(bytes)
                .map(str::to_string)
                .map_err(|_| Error::UnreadableAuditRow {
                    id,
                    why: "hash holds bytes that are neither a hash nor UTF-8, not text".to_string(),
                })
        }
    }
}

/// Stored milliseconds as flagstore writes times, the last one kept: the rows of one
/// transaction share theirs.
#[derive(Default)]
pub(super) struct ShownTime {
    last: Option<(i64, std::sync::Arc<str>)>,
}

impl ShownTime {
    /// `ms` as text, shared by the rows that show it, or `None` for milliseconds no time has.
    pub(super) fn text(&mut self, ms: i64) -> Option<&std::sync::Arc<str>> {
        if self.last.as_ref().is_none_or(|(shown, _)| *shown != ms) {
            let text = chrono::DateTime::from_timestamp_millis(ms).map(crate::audit::timestamp)?;
            self.last = Some((ms, text.into()));
        }
        self.last.as_ref().map(|(_, text)| text)
    }
}

/// Fills in the `prev_hash` of each row of `page` from `stored` (one per row, in order):
/// the link as stored where a row holds one, else the hash of row id - 1, read from the page
/// where it is beside the row (in either order), else by `hash_of`.
pub(super) fn link_page(
    page: &mut [AuditRow],
    stored: Vec<Option<String>>,
    mut hash_of: impl FnMut(i64) -> Result<Option<String>>,
) -> Result<()> {
    for (at, stored) in stored.into_iter().enumerate() {
        let link = match stored {
            Some(link) => link,
            None => {
                let id = page[at].id;
                let beside = [at.checked_sub(1), Some(at + 1)]
                    .into_iter()
                    .flatten()
                    .filter_map(|i| page.get(i))
                    .find(|row| row.id == id - 1);
                hash_before(id, beside.map(|row| row.hash.as_str()), &mut hash_of)?
            }
        };
        page[at].prev_hash = link;
    }
    Ok(())
}

/// `audit_links`' answer from rows read as stored, in id order: (id, the link it stores, its
/// hash), each link stored as none filled in by [`hash_before`] with the row before it.
pub(super) fn link_rows(
    stored: Vec<(i64, Option<String>, String)>,
    mut hash_of: impl FnMut(i64) -> Result<Option<String>>,
) -> Result<Vec<(i64, String, String)>> {
    let mut links: Vec<(i64, String, String)> = Vec::with_capacity(stored.len());
    for (id, stored_link, hash) in stored {
        let prev_hash = match stored_link {
            Some(link) => link,
            None => {
                let beside = links.last().filter(|(previous, ..)| *previous == id - 1);
                hash_before(id, beside.map(|(.., hash)| hash.as_str()), &mut hash_of)?
            }
        };
        links.push((id, prev_hash, hash));
    }
    Ok(links)
}

/// The `prev_hash` of row `id`, stored as none: the hash of row id - 1, `beside` where the
/// caller has read it, else by `hash_of`; the genesis hash for row 1.
fn hash_before(
    id: i64,
    beside: Option<&str>,
    hash_of: impl FnOnce(i64) -> Result<Option<String>>,
) -> Result<String> {
    if id == 1 {
        return Ok(crate::audit::GENESIS_HASH.to_string());
    }
    if let Some(previous) = beside {
        return Ok(previous.to_string());
    }
    hash_of(id - 1)?.ok_or_else(|| Error::UnreadableAuditRow {
        id,
        why: "prev_hash holds NULL, not text".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_in_flagstores_form_is_stored_as_its_bytes_and_shown_as_it_was() {
        let hash = "ab".repeat(32);
        let stored = StoredHash::of(&hash).into_bytes();
        assert_eq!(stored.len(), 32);
        assert_eq!(shown_hash(1, &stored).unwrap(), hash);
        for edited in ["AB".repeat(32), "xyz".to_string(), "é".repeat(32)] {
            let stored = StoredHash::of(&edited).into_bytes();
            assert_ne!(stored.len(), 32, "{edited}");
            assert_eq!(shown_hash(1, &stored).unwrap(), edited);
        }
        let unreadable = shown_hash(7, &[0xff; 64]).unwrap_err().to_string();
        assert!(
            unreadable.contains("audit row 7") && unreadable.contains("hash"),
            "{unreadable}"
        );
    }

    #[test]
    fn a_time_is_stored_as_milliseconds_only_where_they_show_it_again() {
        let kept = |ts: &str| match StoredTime::of_each(std::iter::once(ts)).remove(0) {
            StoredTime::Millis(ms) => ShownTime::default().text(ms).map(|t| t.to_string()),
            StoredTime::Text(_) => None,
        };
        assert_eq!(
            kept("2026-12-08T02:30:00.123Z").as_deref(),
            Some("2026-12-08T02:30:00.123Z")
        );
        // The rows of a transaction share one time, shown once.
        let mut shown = ShownTime::default();
        let first = shown.text(1_765_161_000_123).cloned().unwrap();
        let again = shown.text(1_765_161_000_123).cloned().unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &again));
        assert_eq!(
            &*shown.text(0).cloned().unwrap(),
            "1970-01-01T00:00:00.000Z"
        );
        for other in [
            "2026-12-08 02:30:00",
            "2026-12-08T02:30:00Z",
            "1969-12-31T23:59:59.999Z",
            "2026-12-08T03:30:00.123+01:00",
        ] {
            assert_eq!(kept(other), None, "{other}");
        }
    }

    #[test]
    fn a_link_stored_as_none_is_the_hash_beside_it_or_looked_up() {
        let row = |id: i64, hash: &str| AuditRow {
            id,
            ts: "".into(),
            kind: "change".into(),
            actor: "".into(),
            action: None,
            flag: None,
            context_key: None,
            result: None,
            source: None,
            reason: None,
            detail: "{}".into(),
            prev_hash: String::new(),
            hash: hash.to_string(),
        };
        let mut page = vec![row(1, "h1"), row(3, "h3"), row(2, "h2"), row(9, "h9")];
        let stored = vec![None, None, None, Some("kept".to_string())];
        let mut asked = Vec::new();
        link_page(&mut page, stored, |id| {
            asked.push(id);
            Ok(Some(format!("looked up {id}")))
        })
        .unwrap();
        let links: Vec<&str> = page.iter().map(|row| row.prev_hash.as_str()).collect();
        assert_eq!(
            links,
            [crate::audit::GENESIS_HASH, "h2", "looked up 1", "kept"]
        );
        assert_eq!(asked, [1]);
        let walked = link_rows(
            vec![
                (7, None, "h7".to_string()),
                (8, None, "h8".to_string()),
                (9, Some("kept".to_string()), "h9".to_string()),
                (11, None, "h11".to_string()),
            ],
            |id| Ok(Some(format!("looked up {id}"))),
        )
        .unwrap();
        let links: Vec<&str> = walked.iter().map(|(_, link, _)| link.as_str()).collect();
        assert_eq!(links, ["looked up 6", "h7", "kept", "looked up 10"]);
        let missing = hash_before(5, None, |_| Ok(None)).unwrap_err();
        assert!(missing.to_string().contains("prev_hash"), "{missing}");
    }
}
