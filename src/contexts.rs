//! Context keys for batch evaluation: one per line, read as a stream so memory stays flat.

use std::io::{BufRead, Read};

use crate::error::{Error, Result};

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The longest line that can hold a key, in bytes: a byte order mark, the longest key and a
/// `\r\n` line end.
const LONGEST_LINE: u64 = (UTF8_BOM.len() + MAX_KEY_BYTES + 2) as u64;

/// The longest context key, in UTF-8 bytes. Every decision record holds its key and the log
/// is append-only, so a key of megabytes would grow the log by megabytes for good with each
/// request, and every page that shows it with it; a tenant, batch or run id is far shorter.
pub const MAX_KEY_BYTES: usize = 1024;

/// Why `key` cannot be a context key, if it cannot: longer than [`MAX_KEY_BYTES`], or
/// holding a NUL (PostgreSQL text cannot, so neither backend takes one).
pub fn key_problem(key: &str) -> Option<String> {
    if key.len() > MAX_KEY_BYTES {
        return Some(format!(
            "{} bytes, over the limit of {MAX_KEY_BYTES} bytes for a context key",
            key.len()
        ));
    }
    key.bytes()
        .position(|byte| byte == 0)
        .map(|at| format!("contains a NUL byte (byte {})", at + 1))
}

/// Yields the context keys of a line-oriented input: `\n` or `\r\n` line ends, a UTF-8 byte
/// order mark at the start tolerated, blank lines (empty or only spaces and tabs) skipped. A line that is not UTF-8 is an error
/// naming its line number, since guessing at a key would assign some other context.
pub struct ContextKeys<R> {
    input: R,
    source_name: String,
    line_number: u64,
    buffer: Vec<u8>,
}

impl<R: BufRead> ContextKeys<R> {
    pub fn new(input: R, source_name: &str) -> ContextKeys<R> {
        ContextKeys {
            input,
            source_name: source_name.to_string(),
            line_number: 0,
            buffer: Vec::new(),
        }
    }

    fn next_key(&mut self) -> Result<Option<String>> {
        loop {
            self.buffer.clear();
            let read = (&mut self.input)
                .take(LONGEST_LINE + 1)
                .read_until(b'\n', &mut self.buffer)
                .map_err(|source| Error::Read {
                    path: self.source_name.clone(),
                    source,
                })?;
            if read == 0 {
                return Ok(None);
            }
            self.line_number += 1;
            let refused = |why: String| Error::BadContextLine {
                path: self.source_name.clone(),
                line: self.line_number,
                why,
            };
            // Not read to its end: a file given by mistake (a binary, `/dev/zero`) would
            // otherwise be taken into memory whole, looking for a line break.
            if read as u64 > LONGEST_LINE {
                return Err(refused(format!(
                    "longer than {MAX_KEY_BYTES} bytes, the limit for a context key"
                )));
            }
            let mut line = self.buffer.as_slice();
            if self.line_number == 1 {
                line = line.strip_prefix(UTF8_BOM).unwrap_or(line);
            }
            line = line.strip_suffix(b"\n").unwrap_or(line);
            line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return match std::str::from_utf8(line) {
                Ok(key) => match key_problem(key) {
                    None => Ok(Some(key.to_string())),
                    Some(why) => Err(refused(why)),
                },
                Err(e) => Err(refused(format!(
                    "not valid UTF-8 (byte {})",
                    e.valid_up_to() + 1
                ))),
            };
        }
    }
}

impl<R: BufRead> Iterator for ContextKeys<R> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        self.next_key().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(input: &[u8]) -> Result<Vec<String>> {
        ContextKeys::new(input, "keys.txt").collect()
    }

    #[test]
    fn line_ends_bom_and_blank_lines() {
        assert_eq!(
            keys(b"\xEF\xBB\xBFa\r\nb\n\n\r\nc").unwrap(),
            ["a", "b", "c"]
        );
        assert!(keys(b"").unwrap().is_empty());
    }

    #[test]
    fn only_a_leading_bom_is_removed() {
        assert_eq!(keys(b"a\n\xEF\xBB\xBFb\n").unwrap(), ["a", "\u{feff}b"]);
    }

    #[test]
    fn spaces_are_part_of_the_key() {
        assert_eq!(keys(b" a \n").unwrap(), [" a "]);
    }

    #[test]
    fn keys_up_to_the_limit_are_taken_and_longer_ones_refused_naming_the_line() {
        let longest = "k".repeat(MAX_KEY_BYTES);
        let input = format!("{longest}\n{longest}é\n");
        let message = keys(input.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            message,
            "keys.txt: line 2: 1026 bytes, over the limit of 1024 bytes for a context key"
        );
        assert_eq!(keys(longest.as_bytes()).unwrap(), [longest]);
        assert_eq!(
            key_problem("a\0b").as_deref(),
            Some("contains a NUL byte (byte 2)")
        );
    }

    /// A file given by mistake (a binary, a one-line dump, `/dev/zero`) must not be read into
    /// memory a line at a time: no line longer than the longest key can hold one.
    #[test]
    fn a_line_longer_than_any_key_is_refused_before_it_is_read_whole() {
        struct Counted<R>(R, u64);
        impl<R: std::io::Read> std::io::Read for Counted<R> {
            fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
                let read = self.0.read(buffer)?;
                self.1 += read as u64;
                Ok(read)
            }
        }
        let endless = std::io::Read::take(std::io::repeat(b'x'), 64 << 20);
        let mut input = std::io::BufReader::new(Counted(endless, 0));
        let first = ContextKeys::new(&mut input, "keys.txt").next().unwrap();
        assert_eq!(
            first.unwrap_err().to_string(),
            "keys.txt: line 1: longer than 1024 bytes, the limit for a context key"
        );
        assert!(
            input.get_ref().1 <= 16 << 10,
            "read {} bytes",
            input.get_ref().1
        );
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let message = keys(b"ok\n\nbad\xFF\n").unwrap_err().to_string();
        assert_eq!(message, "keys.txt: line 3: not valid UTF-8 (byte 4)");
    }
}
