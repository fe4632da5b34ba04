//! Lowercase hex, as the audit chain's hashes and token digests are written.

/// `bytes` in lowercase hex, two digits a byte. Runs for every audit row written and every
/// request `serve` authenticates, so it fills one string instead of formatting byte by byte.
pub(crate) fn lowercase(bytes: &[u8]) -> String {
    // Filled pairwise from a table, then checked once: pushing chars encodes each as UTF-8,
    // and that was 7% of the time a walk of the chain took.
    let mut hex = vec![0; 2 * bytes.len()];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&DIGIT_PAIRS[usize::from(*byte)]);
    }
    String::from_utf8(hex).expect("hex digits are ASCII")
}

/// Each byte's two lowercase hex digits.
const DIGIT_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0xf]];
        byte += 1;
    }
    pairs
};

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
        let every_byte: Vec<u8> = (0..=255).collect();
        let formatted: String = every_byte
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        assert_eq!(lowercase(&every_byte), formatted);
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
