//! The rollout bucket must match the Python prototype byte for byte: these vectors were computed
//! with hashlib from the prototype's formula (copied from the team's shared hash_vectors.json).

use md5::{Digest, Md5};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    flag: String,
    context_key: String,
    md5_hex: String,
    bucket: u8,
}

fn vectors() -> Vec<Vector> {
    let text = include_str!("../fixtures/hash_vectors.json");
    serde_json::from_str::<Vectors>(text)
        .expect("fixture parses")
        .vectors
}

#[test]
fn fixture_is_not_empty_and_covers_unicode_and_long_input() {
    let vectors = vectors();
    assert!(vectors.len() >= 10);
    assert!(vectors.iter().any(|v| !v.context_key.is_ascii()));
    assert!(vectors.iter().any(|v| v.flag.len() > 128));
    assert!(vectors.iter().any(|v| v.context_key.is_empty()));
}

#[test]
fn digest_of_flag_colon_key_matches_the_reference() {
    for v in vectors() {
        let digest = Md5::digest(format!("{}:{}", v.flag, v.context_key).as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, v.md5_hex, "{}:{}", v.flag, v.context_key);
    }
}

#[test]
fn bucket_matches_the_reference() {
    for v in vectors() {
        assert_eq!(
            flagstore::bucket(&v.flag, &v.context_key),
            v.bucket,
            "flag {:?} context {:?}",
            v.flag,
            v.context_key
        );
    }
}
