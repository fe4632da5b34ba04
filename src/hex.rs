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

#[cfg(test)]
mod tests {
    use super::lowercase;

    #[test]
    fn each_byte_is_two_lowercase_digits_high_nibble_first() {
        assert_eq!(lowercase(&[0x00, 0x0f, 0xf0, 0xff, 0x5a]), "000ff0ff5a");
        assert_eq!(lowercase(&[]), "");
    }
}
