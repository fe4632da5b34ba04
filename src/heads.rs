//! Signed tree heads: the audit log's Merkle root at a size, signed with an Ed25519 key that
//! lives in a file outside the store, and published to a heads file the store's owner cannot
//! rewrite (a witness: another host's disk, an append-only bucket). Whoever can write the
//! database can re-hash its chain, but cannot sign; once a head is published, changing any row
//! it covers is found by `audit verify --heads`.
//!
//! The signature is over this text (UTF-8, each line ending in `\n`), so a reviewer checks it
//! with `openssl pkeyutl -verify -rawin` and nothing of ours:
//!
//! ```text
//! flagstore tree head v1
//! size <rows covered: 1..=size>
//! root <the RFC 9162 Merkle root over those rows' hashes, lowercase hex>
//! last <the hash of row `size`, where the chain continues>
//! time <when it was signed, RFC 3339 UTC, milliseconds>
//! ```
//!
//! A heads file holds one JSON object per line: those fields, `peaks` (the roots of the tree's
//! perfect subtrees, from which the next head is computed without re-reading older rows;
//! checked against `root`), `key` (the key's id) and `signature` (hex).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::hex::lowercase;
use crate::merkle::{Frontier, Hash};

/// The private half: signs heads. Never stored in the database.
pub struct HeadKey {
    signing: SigningKey,
}

/// Shows the key's id, never the key.
impl std::fmt::Debug for HeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadKey")
            .field("id", &self.public().id())
            .finish_non_exhaustive()
    }
}

/// The public half: what a reviewer holds to check heads.
#[derive(Debug, Clone)]
pub struct HeadVerifier {
    key: VerifyingKey,
}

impl HeadKey {
    /// Makes a new key and writes it to `path` (PKCS#8 PEM, readable by its owner only) and
    /// its public half to `path.pub` (SubjectPublicKeyInfo PEM, as openssl reads it). Refuses
    /// to replace an existing file: a lost key cannot sign again, a replaced one strands every
    /// head signed before.
    pub fn generate(path: &Path) -> Result<HeadKey> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Write {
            path: path.display().to_string(),
            source: std::io::Error::other(format!("no randomness for a key: {e}")),
        })?;
        let key = HeadKey {
            signing: SigningKey::from_bytes(&seed),
        };
        let private = key
            .signing
            .to_pkcs8_pem(Default::default())
            .map_err(|e| key_error(path, e.to_string()))?;
        let public_path = public_path(path);
        write_new(&public_path, key.public().pem().as_bytes(), 0o644)?;
        write_new(path, private.as_bytes(), 0o600).inspect_err(|_| {
            let _ = std::fs::remove_file(&public_path);
        })?;
        Ok(key)
    }

    pub fn load(path: &Path) -> Result<HeadKey> {
        let text = read_key_text(path)?;
        let signing = SigningKey::from_pkcs8_pem(&text).map_err(|e| {
            key_error(
                path,
                format!("not an Ed25519 private key made by `flagstore keys generate` ({e})"),
            )
        })?;
        Ok(HeadKey { signing })
    }

    pub fn public(&self) -> HeadVerifier {
        HeadVerifier {
            key: self.signing.verifying_key(),
        }
    }

    /// Signs the head of the tree `frontier` holds, whose last row has hash `last`.
    pub fn sign(&self, frontier: &Frontier, last: Hash, time: String) -> SignedHead {
        let mut head = SignedHead {
            size: frontier.size(),
            root: HexHash(frontier.root()),
            last: HexHash(last),
            time,
            peaks: frontier.peaks().iter().copied().map(HexHash).collect(),
            key: self.public().id(),
            signature: String::new(),
        };
        head.signature = lowercase(&self.signing.sign(head.signed_text().as_bytes()).to_bytes());
        head
    }
}

/// Where `flagstore keys generate` writes the public half of the key at `path`.
pub fn public_path(path: &Path) -> PathBuf {
    let mut public = path.as_os_str().to_owned();
    public.push(".pub");
    PathBuf::from(public)
}

impl HeadVerifier {
    pub fn load(path: &Path) -> Result<HeadVerifier> {
        let text = read_key_text(path)?;
        let key = VerifyingKey::from_public_key_pem(&text)
            .or_else(|_| SigningKey::from_pkcs8_pem(&text).map(|key| key.verifying_key()))
            .map_err(|e| {
                key_error(
                    path,
                    format!("not an Ed25519 public key (BEGIN PUBLIC KEY) ({e})"),
                )
            })?;
        Ok(HeadVerifier { key })
    }

    /// The key's id, written in every head it signs: the first 8 bytes of the SHA-256 of
    /// the raw 32-byte public key, in hex.
    pub fn id(&self) -> String {
        lowercase(&Sha256::digest(self.key.as_bytes())[..8])
    }

    pub fn pem(&self) -> String {
        self.key
            .to_public_key_pem(Default::default())
            .expect("a 32-byte key encodes")
    }

    /// Checks that `head` was signed by this key and that its peaks make its root; says what
    /// is wrong otherwise.
    pub fn check(&self, head: &SignedHead) -> std::result::Result<Frontier, String> {
        if head.key != self.id() {
            return Err(format!(
                "signed by key {}, not by the key given ({})",
                head.key,
                self.id()
            ));
        }
        let signature = crate::hex::decode(&head.signature)
            .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
            .ok_or("the signature is not 64 bytes of hex")?;
        self.key
            .verify_strict(
                head.signed_text().as_bytes(),
                &Signature::from_bytes(&signature),
            )
            .map_err(|_| "the signature does not match the head (the head was altered)")?;
        let peaks = head.peaks.iter().map(|peak| peak.0).collect();
        let frontier = Frontier::from_peaks(head.size, peaks)
            .filter(|frontier| frontier.root() == head.root.0)
            .ok_or("its peaks do not make its root")?;
        if head.size == 0 {
            return Err("a head of no rows".into());
        }
        Ok(frontier)
    }
}

/// A hash written as 64 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HexHash(pub Hash);

impl std::fmt::Display for HexHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&lowercase(&self.0))
    }
}

impl Serialize for HexHash {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HexHash {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        HexHash::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not 64 hex digits")))
    }
}

impl HexHash {
    pub fn parse(text: &str) -> Option<HexHash> {
        crate::hex::decode(text)
            .and_then(|bytes| Hash::try_from(bytes).ok())
            .map(HexHash)
    }
}

/// One line of a heads file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedHead {
    pub size: u64,
    pub root: HexHash,
    pub last: HexHash,
    pub time: String,
    pub peaks: Vec<HexHash>,
    pub key: String,
    pub signature: String,
}

impl SignedHead {
    /// The bytes the signature is over (see the module's documentation).
    pub fn signed_text(&self) -> String {
        format!(
            "flagstore tree head v1\nsize {}\nroot {}\nlast {}\ntime {}\n",
            self.size, self.root, self.last, self.time
        )
    }

    /// The line a heads file holds, without its newline.
    pub fn line(&self) -> String {
        serde_json::to_string(self).expect("a head serializes")
    }
}

/// How long a witness has to answer: a publisher waits for nothing else.
const WITNESS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Hands `head` to the witness at `url`: an HTTP POST of its heads-file line (JSON), taken
/// when the witness answers 2xx.
pub fn hand_to_witness(url: &str, head: &SignedHead) -> Result<()> {
    let refused = |why: String| Error::Witness {
        url: url.to_string(),
        size: head.size,
        why,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(WITNESS_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    let answer = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(head.line())
        .map_err(|e| refused(e.to_string()))?;
    match answer.status().as_u16() {
        200..=299 => Ok(()),
        code => Err(refused(format!("it answered {code}"))),
    }
}

/// A heads file opened to publish: locked against other publishers until dropped, so heads
/// are appended one at a time and never move backwards.
pub struct HeadsFile {
    path: PathBuf,
    file: File,
}

impl HeadsFile {
    /// Opens (creating) and locks the heads file at `path`, waiting for another publisher to
    /// finish. A last line cut short by a crash (never fsynced whole, so never published) is
    /// ended with a line break, not cut from the file: a witness's file may be append-only,
    /// where nothing may shorten it, and readers pass over such a line (see [`HeadLines`]).
    pub fn open(path: &Path) -> Result<HeadsFile> {
        a_file(path)?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|source| write_error(path, source))?;
        file.lock().map_err(|source| write_error(path, source))?;
        let mut heads = HeadsFile {
            path: path.to_path_buf(),
            file,
        };
        heads.seal_torn_line()?;
        Ok(heads)
    }

    fn seal_torn_line(&mut self) -> Result<()> {
        let whole = whole_lines_len(&mut self.file, &self.path)?;
        if whole < file_len(&self.file, &self.path)? {
            self.write_durably(b"\n")?;
        }
        Ok(())
    }

    /// The newest head, read from the end of the file (a year of heads is not re-read).
    pub fn newest(&mut self) -> Result<Option<SignedHead>> {
        newest_in(&mut self.file, &self.path)
    }

    /// Appends `head` and waits until it is on disk: a head is published once fsynced.
    pub fn append(&mut self, head: &SignedHead) -> Result<()> {
        let mut line = head.line();
        line.push('\n');
        self.write_durably(line.as_bytes())
    }

    fn write_durably(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .and_then(|()| self.file.sync_data())
            .map_err(|source| write_error(&self.path, source))
    }
}

/// Refuses `key` for the heads file at `path` when the file's newest head is another key's
/// (see [`same_key`]). Called before a command writes, so one that could not sign writes
/// nothing. A file not there yet takes any key.
pub fn check_key_for(path: &Path, key: &HeadVerifier) -> Result<()> {
    a_file(path)?;
    match newest_head(path) {
        Err(Error::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(()),
        newest => newest?.map_or(Ok(()), |head| same_key(path, &head, key)),
    }
}

/// Refuses `key` for the heads file at `path` whose newest head is `head`, signed by another
/// key: a heads file holds one key's heads, and a publisher extends the newest head's tree
/// only once it has checked its signature. A new key (the old one retired or exposed)
/// publishes to a new heads file, whose first head covers every row.
pub fn same_key(path: &Path, head: &SignedHead, key: &HeadVerifier) -> Result<()> {
    if head.key == key.id() {
        return Ok(());
    }
    Err(Error::HeadMismatch {
        path: path.display().to_string(),
        at: "newest head".into(),
        why: format!(
            "signed by key {}, not by this signing key ({}): a heads file holds one key's heads; \
             a new key publishes to a new heads file, whose first head covers every row",
            head.key,
            key.id()
        ),
    })
}

/// The newest head of the heads file at `path`, read without writing to it (a reviewer's
/// copy may be read-only); a line cut short is not a head.
pub fn newest_head(path: &Path) -> Result<Option<SignedHead>> {
    let mut file = File::open(path).map_err(|source| read_error(path, source))?;
    newest_in(&mut file, path)
}

/// The last line that is not cut short, read back from the end in pieces, each byte once: a
/// run of lines cut short costs no more than reading them.
fn newest_in(file: &mut File, path: &Path) -> Result<Option<SignedHead>> {
    // `tail` holds the file's bytes from offset `start` to the end of the line being looked
    // at, line break included: each line found cut short is dropped from its end.
    let mut start = whole_lines_len(file, path)?;
    let mut tail = Vec::new();
    loop {
        let body = &tail[..tail.len().saturating_sub(1)];
        let line_start = body.iter().rposition(|&b| b == b'\n').map(|at| at + 1);
        if line_start.is_none() && start > 0 {
            if body.len() as u64 > MAX_LINE_BYTES {
                return Err(Error::BadHeads {
                    path: path.display().to_string(),
                    at: format!("byte {start}"),
                    why: format!("a line longer than {MAX_LINE_BYTES} bytes: not a heads file"),
                });
            }
            let piece_start = start.saturating_sub(MAX_LINE_BYTES);
            let mut piece = vec![0u8; (start - piece_start) as usize];
            read_at(file, path, piece_start, &mut piece)?;
            piece.append(&mut tail);
            (start, tail) = (piece_start, piece);
            continue;
        }
        let line_start = line_start.unwrap_or(0);
        match &body[line_start..] {
            [] if tail.is_empty() => return Ok(None),
            line if cut_short(line) => tail.truncate(line_start),
            line => return parse_head(path, None, line).map(Some),
        }
    }
}

/// Whether a line of a heads file (without its line break) was cut short by a publisher
/// stopped while writing it, and later sealed with a line break: every head's line ends with
/// the brace that closes its object, and no cut-short line does (what a crash leaves of the
/// line, or the zeros a file system may show in its place). Such a line was never published;
/// a reader passes over it and says so.
fn cut_short(line: &[u8]) -> bool {
    line.last() != Some(&b'}')
}

fn file_len(file: &File, path: &Path) -> Result<u64> {
    Ok(file
        .metadata()
        .map_err(|source| read_error(path, source))?
        .len())
}

/// The length of the file up to and including its last newline.
fn whole_lines_len(file: &mut File, path: &Path) -> Result<u64> {
    let len = file_len(file, path)?;
    Ok(last_newline_before(file, path, len)?.map_or(0, |newline| newline + 1))
}

/// The offset of the last newline before offset `end`, `None` when the file has none there.
/// Reads back one line's worth at most: no line of a heads file is longer than
/// [`MAX_LINE_BYTES`], so a file whose end has no newline within that is not a heads file.
fn last_newline_before(file: &mut File, path: &Path, end: u64) -> Result<Option<u64>> {
    let start = end.saturating_sub(MAX_LINE_BYTES + 1);
    let mut piece = vec![0u8; (end - start) as usize];
    read_at(file, path, start, &mut piece)?;
    match piece.iter().rposition(|&b| b == b'\n') {
        Some(newline) => Ok(Some(start + newline as u64)),
        None if start == 0 => Ok(None),
        None => Err(Error::BadHeads {
            path: path.display().to_string(),
            at: "end".to_string(),
            why: format!("no line break in its last {MAX_LINE_BYTES} bytes: not a heads file"),
        }),
    }
}

fn read_at(file: &mut File, path: &Path, offset: u64, buffer: &mut [u8]) -> Result<()> {
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(buffer))
        .map_err(|source| read_error(path, source))
}

/// The longest line a heads file may hold: a head of the largest tree (64 peaks) is under
/// 5 KB, so a longer line is not one, and reading it whole would let a hostile file exhaust
/// a reviewer's memory.
const MAX_LINE_BYTES: u64 = 64 * 1024;

/// The lines of a heads file that are not heads: those found cut short (how many, and the
/// first few by number: a hostile file of nothing else must fill neither a reviewer's memory
/// nor their screen), and the last line when it has no line break yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CutShortLines {
    pub count: usize,
    pub first: Vec<usize>,
    /// The last line, without its line break: a head a publisher is writing as the file is
    /// read, or one whose publisher stopped and that no publisher has sealed since. Which of
    /// the two, a reader cannot tell, so it does not call the line cut short.
    pub unfinished: Option<usize>,
}

impl CutShortLines {
    /// How many are named by number.
    const NAMED: usize = 10;

    fn push(&mut self, line: usize) {
        if self.first.len() < Self::NAMED {
            self.first.push(line);
        }
        self.count += 1;
    }

    /// Whether every line was a head.
    pub fn is_empty(&self) -> bool {
        self.count == 0 && self.unfinished.is_none()
    }
}

impl std::fmt::Display for CutShortLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let named: Vec<String> = self.first.iter().map(usize::to_string).collect();
        match (self.count, self.count - self.first.len()) {
            (0, _) => Ok(()),
            (1, _) => write!(
                f,
                "line {} was cut short (a publisher stopped while writing it): not a head",
                named.join("")
            ),
            (_, unnamed) => write!(
                f,
                "lines {}{} were cut short (publishers stopped while writing them): not heads",
                named.join(", "),
                match unnamed {
                    0 => String::new(),
                    more => format!(" and {more} more"),
                }
            ),
        }?;
        match (self.unfinished, self.count) {
            (None, _) => Ok(()),
            (Some(line), cut_short) => write!(
                f,
                "{}line {line} has no line break yet (a head being written, or one whose \
                 publisher stopped): not a head",
                if cut_short > 0 { "; " } else { "" }
            ),
        }
    }
}

/// The heads of a file, in order, each with its line number. A line cut short by a crash is
/// not a head (it was never published): the iterator passes over it and counts it in
/// [`HeadLines::cut_short`].
pub struct HeadLines {
    path: PathBuf,
    reader: BufReader<File>,
    number: usize,
    cut_short: CutShortLines,
}

impl HeadLines {
    pub fn open(path: &Path) -> Result<HeadLines> {
        let file = File::open(path).map_err(|source| read_error(path, source))?;
        Ok(HeadLines {
            path: path.to_path_buf(),
            reader: BufReader::new(file),
            number: 0,
            cut_short: CutShortLines::default(),
        })
    }

    /// The lines read so far that were not heads: cut short, or the last one unfinished.
    pub fn cut_short(&self) -> &CutShortLines {
        &self.cut_short
    }
}

impl Iterator for HeadLines {
    type Item = Result<(usize, SignedHead)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let mut line = Vec::new();
            let mut bounded = (&mut self.reader).take(MAX_LINE_BYTES + 1);
            if let Err(source) = bounded.read_until(b'\n', &mut line) {
                return Some(Err(read_error(&self.path, source)));
            }
            if line.len() as u64 > MAX_LINE_BYTES {
                return Some(Err(Error::BadHeads {
                    path: self.path.display().to_string(),
                    at: format!("line {}", self.number + 1),
                    why: format!("longer than {MAX_LINE_BYTES} bytes: not a signed head"),
                }));
            }
            if line.is_empty() {
                return None;
            }
            self.number += 1;
            if line.pop() != Some(b'\n') {
                self.cut_short.unfinished = Some(self.number);
                return None;
            }
            if cut_short(&line) {
                self.cut_short.push(self.number);
                continue;
            }
            let number = self.number;
            return Some(parse_head(&self.path, Some(number), &line).map(|h| (number, h)));
        }
    }
}

fn parse_head(path: &Path, line: Option<usize>, text: &[u8]) -> Result<SignedHead> {
    serde_json::from_slice(text).map_err(|e| Error::BadHeads {
        path: path.display().to_string(),
        at: line.map_or("last line".to_string(), |n| format!("line {n}")),
        why: format!("not a signed head: {e}"),
    })
}

fn read_key_text(path: &Path) -> Result<String> {
    use crate::file::{SMALL_FILE_BYTES, read_small_text};
    read_small_text(path)?.ok_or_else(|| {
        key_error(
            path,
            format!("larger than {SMALL_FILE_BYTES} bytes: not a key"),
        )
    })
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| file.write_all(contents).and_then(|()| file.sync_all()))
        .map_err(|source| write_error(path, source))
}

fn key_error(path: &Path, why: String) -> Error {
    Error::BadKey {
        path: path.display().to_string(),
        why,
    }
}

fn read_error(path: &Path, source: std::io::Error) -> Error {
    Error::Read {
        path: path.display().to_string(),
        source,
    }
}

/// Refuses a heads path that exists and is not a file: a FIFO blocks the publisher (in `open`,
/// or once its buffer is full), and a device keeps nothing to read back.
fn a_file(path: &Path) -> Result<()> {
    match crate::file::not_a_file(path) {
        Some(kind) => Err(Error::HeadsNotAFile {
            path: path.display().to_string(),
            kind,
        }),
        None => Ok(()),
    }
}

fn write_error(path: &Path, source: std::io::Error) -> Error {
    Error::Write {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::leaf_hash;

    fn signed(key: &HeadKey, rows: u64) -> SignedHead {
        let mut frontier = Frontier::default();
        (0..rows).for_each(|i| frontier.push(leaf_hash(&i.to_be_bytes())));
        key.sign(&frontier, [7; 32], "2026-12-06T08:00:00.000Z".into())
    }

    #[test]
    fn a_signed_head_checks_and_any_change_to_it_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let key = HeadKey::generate(&dir.path().join("heads.key")).unwrap();
        let verifier = HeadVerifier::load(&dir.path().join("heads.key.pub")).unwrap();
        let head = signed(&key, 5);
        assert_eq!(verifier.check(&head).map(|f| f.size()), Ok(5));

        let mut moved = head.clone();
        moved.size = 6;
        assert!(verifier.check(&moved).unwrap_err().contains("altered"));
        let mut retimed = head.clone();
        retimed.time = "2026-12-06T08:00:00.001Z".into();
        assert!(verifier.check(&retimed).unwrap_err().contains("altered"));
        let mut repeaked = head.clone();
        repeaked.peaks[0] = HexHash([0; 32]);
        assert!(verifier.check(&repeaked).unwrap_err().contains("peaks"));

        let other = HeadKey::generate(&dir.path().join("other.key")).unwrap();
        assert!(
            other
                .public()
                .check(&head)
                .unwrap_err()
                .contains("not by the key")
        );
    }

    #[test]
    fn keys_are_never_overwritten_and_the_private_half_is_the_owners_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heads.key");
        HeadKey::generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let before = std::fs::read(&path).unwrap();
        assert!(HeadKey::generate(&path).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert!(HeadKey::load(&path).is_ok());
        let not_a_key = HeadKey::load(&public_path(&path))
            .err()
            .unwrap()
            .to_string();
        assert!(not_a_key.contains("heads.key.pub"), "{not_a_key}");
    }

    #[test]
    fn lines_cut_short_are_sealed_and_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let key = HeadKey::generate(&dir.path().join("k")).unwrap();
        let path = dir.path().join("heads.jsonl");
        let mut heads = HeadsFile::open(&path).unwrap();
        assert_eq!(heads.newest().unwrap(), None);
        for rows in [1, 3, 9] {
            heads.append(&signed(&key, rows)).unwrap();
        }
        assert_eq!(heads.newest().unwrap().map(|h| h.size), Some(9));
        drop(heads);

        let crash = |leaves: &[u8]| {
            let mut file = OpenOptions::new().append(true).open(&path).unwrap();
            file.write_all(leaves).unwrap();
        };
        let read_all = || {
            let mut lines = HeadLines::open(&path).unwrap();
            let seen: Vec<(usize, u64)> = lines
                .by_ref()
                .map(|head| head.map(|(line, head)| (line, head.size)).unwrap())
                .collect();
            let not_heads = lines.cut_short();
            (seen, not_heads.first.clone(), not_heads.unfinished)
        };
        // Unsealed, the last line is unfinished: it may be a head being written.
        crash(br#"{"size":12,"ro"#);
        assert_eq!(read_all(), (vec![(1, 1), (2, 3), (3, 9)], vec![], Some(4)));
        let mut sealed = std::fs::read(&path).unwrap();
        sealed.push(b'\n');
        let mut heads = HeadsFile::open(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), sealed);
        assert_eq!(heads.newest().unwrap().map(|h| h.size), Some(9));
        heads.append(&signed(&key, 12)).unwrap();
        drop(heads);
        assert_eq!(
            read_all(),
            (vec![(1, 1), (2, 3), (3, 9), (5, 12)], vec![4], None)
        );

        // Crashes in a row, one leaving zeros where its line was to be: the newest head is
        // found before them, and a publisher seals only the last (the others have breaks).
        crash(b"{\"size\":13\n\0\0\0");
        assert_eq!(newest_head(&path).unwrap().map(|h| h.size), Some(12));
        assert_eq!((read_all().1, read_all().2), (vec![4, 6], Some(7)));
        let mut lines = HeadLines::open(&path).unwrap();
        lines.by_ref().for_each(drop);
        assert_eq!(
            lines.cut_short().to_string(),
            "lines 4, 6 were cut short (publishers stopped while writing them): not heads; \
             line 7 has no line break yet (a head being written, or one whose publisher \
             stopped): not a head"
        );
        let mut heads = HeadsFile::open(&path).unwrap();
        assert_eq!(heads.newest().unwrap().map(|h| h.size), Some(12));
        heads.append(&signed(&key, 14)).unwrap();
        assert_eq!(heads.newest().unwrap().map(|h| h.size), Some(14));
        drop(heads);
        assert_eq!(
            read_all(),
            (
                vec![(1, 1), (2, 3), (3, 9), (5, 12), (8, 14)],
                vec![4, 6, 7],
                None
            )
        );
        // Read back past a long run of them, in pieces: the head before them is found.
        crash(&b"{\"size\":15,\"root\"\n".repeat(20_000));
        assert_eq!(newest_head(&path).unwrap().map(|h| h.size), Some(14));
        let mut lines = HeadLines::open(&path).unwrap();
        assert_eq!(lines.by_ref().count(), 5);
        let cut_short = lines.cut_short();
        assert_eq!((cut_short.count, cut_short.first.len()), (3 + 20_000, 10));
        assert!(cut_short.to_string().starts_with("lines 4, 6, 7, 9, 10,"));
        assert!(
            cut_short
                .to_string()
                .contains(", 15 and 19993 more were cut short")
        );

        let long = dir.path().join("long.jsonl");
        std::fs::write(&long, vec![b' '; 100_000]).unwrap();
        let refused = HeadLines::open(&long).unwrap().next().unwrap().unwrap_err();
        assert!(
            refused
                .to_string()
                .ends_with("line 1: longer than 65536 bytes: not a signed head")
        );
        let refused = newest_head(&long).unwrap_err().to_string();
        assert!(refused.ends_with("no line break in its last 65536 bytes: not a heads file"));
        // A publisher neither signs onto it nor seals it as a line cut short.
        assert!(HeadsFile::open(&long).is_err());
        assert_eq!(std::fs::metadata(&long).unwrap().len(), 100_000);
    }
}
