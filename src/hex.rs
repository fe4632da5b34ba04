//! Lowercase hex, as the audit chain's hashes and token digests are written.

/// `bytes` in lowercase hex, two digits a byte. Runs for every audit row written and every
/// request `serve` authenticates, so it fills one string instead of formatting byte by byte.
pub(crate) fn lowercase(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    hex
}

/// The bytes `text` spells in hex (either case), or `None` if it is not an even number of hex
/// digits.
pub(crate) fn decode(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks_exact(2)
        .map(|pair| {
            let high = char::from(pair[0]).to_digit(16)?;
            let low = char::from(pair[1]).to_digit(16)?;
            u8::try_from(high << 4 | low).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{decode, lowercase};

    #[test]
    fn each_byte_is_two_lowercase_digits_high_nibble_first() {
        assert_eq!(lowercase(&[0x00, 0x0f, 0xf0, 0xff, 0x5a]), "000ff0ff5a");
        assert_eq!(lowercase(&[]), "");
    }

    #[test]
    fn decoding_reverses_encoding_and_refuses_anything_else() {
        assert_eq!(
            decode("000ff0FF5a"),
            Some(vec![0x00, 0x0f, 0xf0, 0xff, 0x5a])
        );
        assert_eq!(decode(""), Some(vec![]));
        assert_eq!(decode("abc"), None);
        assert_eq!(decode("zz"), None);
        assert_eq!(decode("+1"), None);
    }
}
