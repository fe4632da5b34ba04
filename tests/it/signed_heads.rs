//! Signed tree heads against an insider who can write the store: every writing command
//! publishes a head, and rewriting what a head covers, even with every hash recomputed so the
//! chain verifies, is named by `audit verify --heads` and refused by the next publisher. The
//! reviewer's script checks the same heads and proofs with openssl alone.

use std::path::Path;
use std::process::Command;

use crate::common::{Env, FakeWitness, PIPELINE, Signing};

/// A store whose commands sign heads with a fresh key into `heads.jsonl` beside it.
struct Witnessed {
    env: Env,
    signing: Signing,
}

impl Witnessed {
    fn new() -> Witnessed {
        let env = Env::new();
        let witnessed = Witnessed {
            signing: env.signing(),
            env,
        };
        let pipeline = witnessed.env.write("pipeline.json", PIPELINE);
        witnessed.ok(&["import", pipeline.to_str().unwrap()]);
        witnessed.ok(&["flag", "set", "enrich", "--rollout", "25"]);
        for context in ["tenant:ü", "b", "c"] {
            witnessed.ok(&["eval", "--all", "--context", context]);
        }
        witnessed
    }

    /// `flagstore ARGS` with the signing key and heads file in the environment.
    fn cmd(&self) -> assert_cmd::Command {
        assert_cmd::Command::from_std(self.env.signing_cmd(&self.signing))
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.cmd().args(args).output().unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn fails(&self, args: &[&str]) -> String {
        self.fails_with(&[], args)
    }

    /// [`Witnessed::fails`] with more variables in the environment (or some replaced).
    fn fails_with(&self, variables: &[(&str, &str)], args: &[&str]) -> String {
        let output = self
            .cmd()
            .envs(variables.iter().copied())
            .args(args)
            .output()
            .unwrap();
        let said = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {said}");
        said.trim_end().to_string()
    }

    fn heads(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.signing.heads)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    fn verify_args(&self) -> Vec<String> {
        ["audit", "verify", "--heads"]
            .into_iter()
            .map(String::from)
            .chain([
                self.signing.heads.display().to_string(),
                "--public-key".into(),
                self.signing.public_key.display().to_string(),
            ])
            .collect()
    }

    /// `run` given `audit verify --heads ... EXTRA`, run without the signing key.
    fn run_verify<T>(&self, extra: &[&str], run: impl Fn(&Env, &[&str]) -> T) -> T {
        let args = self.verify_args();
        let args: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
            .collect();
        run(&self.env, &args)
    }

    fn verify_with(&self, extra: &[&str]) -> String {
        self.run_verify(extra, Env::ok)
    }

    fn verify_refused_with(&self, extra: &[&str]) -> String {
        self.run_verify(extra, Env::fails)
    }

    fn verify(&self) -> String {
        self.verify_with(&[])
    }

    fn verify_from_newest_head(&self) -> String {
        self.verify_with(&["--from-newest-head"])
    }

    fn verify_fails(&self) -> String {
        self.verify_refused_with(&[])
    }

    /// The reviewer's script on `args`: its exit code and what it said.
    fn script(&self, args: &[&str]) -> (Option<i32>, String) {
        let output = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/verify_tree_proof.py"
            ))
            .arg("--public-key")
            .arg(&self.signing.public_key)
            .args(args)
            .current_dir(self.env.dir.path())
            .output()
            .expect("python3 runs");
        let said = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.code(), said.trim_end().to_string())
    }

    /// `audit verify` without the heads passes: the chain alone shows nothing.
    fn chain_verifies(&self) {
        let verified = self.env.ok(&["audit", "verify"]);
        assert!(verified.starts_with("audit log verified"), "{verified}");
    }

    fn rows(&self) -> i64 {
        self.env.count("SELECT count(*) FROM audit_log")
    }

    /// Rewrites every row from `first` on as an insider would who wants `audit verify` and
    /// the chain script to pass: row `first` gets another actor, and each row from there on
    /// its hash (and the next its prev_hash) recomputed.
    fn rewrite_from(&self, first: i64) {
        let store = self.env.open_store();
        let mut rows = store.stored_audit_rows(first, i64::MAX).unwrap();
        drop(store);
        rows[0].actor = "mallory".into();
        let mut prev_hash = rows[0].prev_hash.clone();
        let mut sql = String::new();
        for row in &mut rows {
            row.hash = row.expected_hash(&prev_hash);
            sql.push_str(&format!(
                "UPDATE audit_log SET actor = '{}', prev_hash = '{prev_hash}', hash = '{}' \
                 WHERE id = {};",
                row.actor, row.hash, row.id
            ));
            prev_hash.clone_from(&row.hash);
        }
        self.env.tamper(&sql);
    }
}

fn heads_from_writing_commands_verify_and_prove() {
    let witnessed = Witnessed::new();
    let heads = witnessed.heads();
    // import, flag set and three evaluations: a head each, covering the rows so far.
    assert_eq!(heads.len(), 5, "{heads:?}");
    let rows = witnessed.rows();
    assert_eq!(heads.last().unwrap()["size"], rows);
    // Commands that only read publish nothing.
    witnessed.ok(&["audit", "--limit", "3"]);
    witnessed.ok(&["flag", "list"]);
    assert_eq!(witnessed.heads().len(), 5);

    let verified = witnessed.verify();
    assert!(
        verified.contains(&format!("audit log verified: {rows} rows"))
            && verified.contains("all 5 signed heads of")
            && verified.contains(&format!("covers rows 1..={rows}\n")),
        "{verified}"
    );
    // Rows written without the key are verified after the head and said to be unsigned.
    witnessed
        .env
        .ok(&["eval", "ingest", "--context", "unsigned"]);
    let tail = witnessed.verify_from_newest_head();
    assert!(
        tail.contains(&format!("rows 1..={rows} taken as signed"))
            && tail.contains(&format!(
                "rows {}..={} are not yet under",
                rows + 1,
                rows + 1
            )),
        "{tail}"
    );
    // The next signed command covers them too.
    witnessed.ok(&["eval", "ingest", "--context", "signed"]);
    assert_eq!(witnessed.heads().last().unwrap()["size"], rows + 2);

    let (code, said) = witnessed.script(&["--heads", witnessed.signing.heads.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("heads verified: 6 signed heads"), "{said}");
    let heads_file = witnessed.signing.heads.to_str().unwrap();
    for row in 1..=rows + 2 {
        let proof = witnessed.ok(&["audit", "prove", &row.to_string(), "--heads", heads_file]);
        let path = witnessed.env.write("proof.json", &proof);
        let (code, said) = witnessed.script(&[path.to_str().unwrap()]);
        assert_eq!(code, Some(0), "row {row}: {said}");
        assert!(said.contains(&format!("row {row} (hash ")), "{said}");
    }
    // Against an older head, kept by a reviewer: the proof carries that head.
    let older = heads[2]["size"].to_string();
    let proof = witnessed.ok(&[
        "audit", "prove", "2", "--heads", heads_file, "--size", &older,
    ]);
    let path = witnessed.env.write("older.json", &proof);
    let (code, said) = witnessed.script(&[path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!("in the tree of rows 1..={older},")),
        "{said}"
    );
    let store_rows = witnessed.rows();
    let outside = witnessed.fails(&["audit", "prove", "0"]);
    assert!(
        outside.ends_with(&format!(
            "row 0 is outside the tree's rows 1..={store_rows}"
        )),
        "{outside}"
    );
    let too_big = witnessed.fails(&["audit", "prove", "1", "--size", "999999"]);
    assert!(
        too_big.ends_with(&format!(
            "tree size 999999 is outside 1..={store_rows} (the rows the store holds)"
        )),
        "{too_big}"
    );
    let none = witnessed.fails(&["audit", "prove", "2", "--heads", heads_file, "--size", "3"]);
    assert!(
        none.ends_with("heads.jsonl: end: no head of 3 rows"),
        "{none}"
    );

    let first_size = heads[0]["size"].to_string();
    let proof = witnessed.ok(&[
        "audit",
        "prove",
        "--from-size",
        &first_size,
        "--heads",
        heads_file,
    ]);
    let path = witnessed.env.write("consistency.json", &proof);
    let (code, said) = witnessed.script(&[path.to_str().unwrap(), "--heads", heads_file]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!("extends that of rows 1..={first_size}, as signed")),
        "{said}"
    );

    // A proof edited to claim another row does not hold.
    let forged = proof.replace("\"old_size\": ", "\"old_size\": 1");
    let path = witnessed.env.write("forged.json", forged);
    let (code, said) = witnessed.script(&[path.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{said}");
}

fn a_rewritten_tail_passes_the_chain_but_not_the_heads() {
    let witnessed = Witnessed::new();
    let heads = witnessed.heads();
    let (second, third) = (
        heads[1]["size"].as_i64().unwrap(),
        heads[2]["size"].as_i64().unwrap(),
    );
    // A row under the third head, past the second.
    witnessed.rewrite_from(third);
    witnessed.chain_verifies();

    let named = witnessed.verify_fails();
    assert!(named.contains(": line 3: the store's rows 1..="), "{named}");
    // The first difference lies after the last head that holds, up to this one.
    let after_time = named.split("Z: ").nth(1).unwrap();
    let bounds: Vec<i64> = after_time
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .take(2)
        .collect();
    let (first, last) = (bounds[0], *bounds.get(1).unwrap_or(&bounds[0]));
    assert!(second < first && first <= third && third <= last, "{named}");

    // The next writer with the key refuses to sign over it, and says where to look.
    let refused = witnessed.fails(&["eval", "ingest", "--context", "after"]);
    assert!(
        refused.contains("newest head: the head signed")
            && refused.contains("were rewritten or removed"),
        "{refused}"
    );
    assert_eq!(witnessed.heads().len(), heads.len());
}

fn rows_cut_from_the_end_are_named() {
    let witnessed = Witnessed::new();
    let rows = witnessed.rows();
    witnessed.env.tamper(&format!(
        "DELETE FROM audit_ranges WHERE first_id > {cut}; \
         DELETE FROM audit_log WHERE id > {cut}",
        cut = rows - 2
    ));
    witnessed.chain_verifies();
    // The first head past the cut is named: it covered row rows - 1, now gone.
    let named = witnessed.verify_fails();
    assert!(
        named.ends_with(&format!(
            "but the store has {} rows: row {} was removed",
            rows - 2,
            rows - 1
        )),
        "{named}"
    );
    // Rows written since are no cover: they are not the rows signed.
    witnessed.env.ok(&["eval", "--all", "--context", "refill"]);
    let named = witnessed.verify_fails();
    assert!(
        named.contains(&format!("row {} differs from what was signed", rows - 1)),
        "{named}"
    );
    let refused = witnessed.fails(&["eval", "ingest", "--context", "after"]);
    assert!(
        refused.contains(&format!("the store's row {rows} has hash")),
        "{refused}"
    );
}

/// Rows written after the newest head are signed only if they link to it and to each other.
fn a_broken_link_after_the_newest_head_is_not_signed() {
    let witnessed = Witnessed::new();
    let signed = witnessed.rows();
    witnessed
        .env
        .ok(&["eval", "--all", "--context", "unsigned-1"]);
    witnessed
        .env
        .ok(&["eval", "--all", "--context", "unsigned-2"]);
    let forged = "ab".repeat(32);
    witnessed.env.tamper(&format!(
        "UPDATE audit_log SET prev_hash = '{forged}' WHERE id = {}",
        signed + 2
    ));
    let refused = witnessed.fails(&["eval", "ingest", "--context", "after"]);
    assert!(
        refused.contains(&format!("row {} does not continue it", signed + 2))
            && refused.contains("(broken link)"),
        "{refused}"
    );
    assert_eq!(witnessed.heads().last().unwrap()["size"], signed);
}

fn an_altered_reordered_or_foreign_heads_file_is_named() {
    let witnessed = Witnessed::new();
    let text = std::fs::read_to_string(&witnessed.signing.heads).unwrap();
    let lines: Vec<&str> = text.lines().collect();

    let second = &witnessed.heads()[1];
    let moved = lines[1].replacen(
        &format!("\"size\":{}", second["size"]),
        &format!("\"size\":{}", second["size"].as_i64().unwrap() + 1),
        1,
    );
    std::fs::write(
        &witnessed.signing.heads,
        [lines[0], &moved, lines[2]].join("\n") + "\n",
    )
    .unwrap();
    let named = witnessed.verify_fails();
    assert!(
        named.ends_with("line 2: the signature does not match the head (the head was altered)"),
        "{named}"
    );
    let (code, said) = witnessed.script(&["--heads", witnessed.signing.heads.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(
        said.contains("line 2: the signature does not match"),
        "{said}"
    );

    std::fs::write(
        &witnessed.signing.heads,
        [lines[1], lines[0]].join("\n") + "\n",
    )
    .unwrap();
    let named = witnessed.verify_fails();
    assert!(
        named.contains("line 2: its size") && named.ends_with("heads never move backwards"),
        "{named}"
    );

    std::fs::write(&witnessed.signing.heads, text.clone()).unwrap();
    let other = witnessed.env.dir.path().join("other.key");
    witnessed
        .env
        .ok(&["keys", "generate", other.to_str().unwrap()]);
    let mut args = witnessed.verify_args();
    args[5] = format!("{}.pub", other.display());
    let named = witnessed
        .env
        .fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(named.contains("line 1: signed by key"), "{named}");
    // Nor does another key extend this file: a new key starts a new heads file.
    let said = witnessed.fails_with(
        &[("FLAGSTORE_SIGNING_KEY", other.to_str().unwrap())],
        &["eval", "ingest", "--context", "rotated"],
    );
    assert!(said.contains("newest head: signed by key"), "{said}");
}

/// Each head is handed to the witness URL as well; one it refuses fails the command, though
/// the head is in the heads file.
fn a_witness_url_is_handed_every_head() {
    let witnessed = Witnessed::new();
    let accepting = FakeWitness::start(200);
    for context in ["w1", "w2"] {
        let output = witnessed
            .cmd()
            .env("FLAGSTORE_WITNESS_URL", &accepting.url)
            .args(["eval", "ingest", "--context", context])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
    }
    let text = std::fs::read_to_string(&witnessed.signing.heads).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(accepting.bodies(), lines[lines.len() - 2..]);

    let refusing = FakeWitness::start(503);
    let said = witnessed.fails_with(
        &[("FLAGSTORE_WITNESS_URL", &refusing.url)],
        &["eval", "ingest", "--context", "w3"],
    );
    let rows = witnessed.rows();
    assert!(
        said.trim_end().ends_with(&format!(
            "the witness at {} did not take the head of {rows} rows: it answered 503",
            refusing.url
        )),
        "{said}"
    );
    assert_eq!(witnessed.heads().last().unwrap()["size"], rows);

    let alone = witnessed.env.fails(&[
        "--witness-url",
        &accepting.url,
        "eval",
        "ingest",
        "--context",
        "w4",
    ]);
    assert!(
        alone.contains("--witness-url needs --signing-key and --heads"),
        "{alone}"
    );
}

/// A checkpoint is held in the walk that holds the heads, whole or from the newest head: from
/// there, a checkpoint of a row the head covers is reached by re-hashing from its row on (those
/// rows link it to the head's signed last row), one after the head by the tail walk, and a bare
/// hash (`--expect-head`) by walking every row. A checkpoint of another log is named, and so is
/// a row rewritten between the checkpoint and the head; a row before the checkpoint is left to
/// the whole verify.
fn a_checkpoint_is_held_in_the_walk_that_holds_the_heads() {
    let witnessed = Witnessed::new();
    let checkpoint = |name: &str| {
        let path = witnessed.env.dir.path().join(name);
        witnessed
            .env
            .ok(&["audit", "checkpoint", "-o", path.to_str().unwrap()]);
        path.display().to_string()
    };
    let early = checkpoint("early.json");
    let early_row = witnessed.rows();
    for context in ["d", "e"] {
        witnessed.ok(&["eval", "--all", "--context", context]);
    }
    let signed = witnessed.rows();
    witnessed
        .env
        .ok(&["eval", "ingest", "--context", "unsigned"]);
    let late = checkpoint("late.json");
    let rows = witnessed.rows();
    let verify = |extra: &[&str]| witnessed.verify_with(extra);
    let verify_fails = |extra: &[&str]| witnessed.verify_refused_with(extra);
    let tail = "--from-newest-head";

    assert_eq!(verify(&["--checkpoint", &early]), verify(&[]));
    let from_early = verify(&[tail, "--checkpoint", &early]);
    assert!(
        from_early.contains(&format!(
            "rows {early_row}..={signed} re-hashed from the checkpoint's row on, pages before \
             it not read): {rows} rows"
        )),
        "{from_early}"
    );
    let from_late = verify(&[tail, "--checkpoint", &late]);
    assert!(
        from_late.contains(&format!("their pages not read): {rows} rows")),
        "{from_late}"
    );
    let early_hash = witnessed.env.texts(&format!(
        "SELECT hash FROM audit_log WHERE id = {early_row}"
    ));
    let by_hash = verify(&[tail, "--expect-head", &early_hash[0]]);
    assert!(
        by_hash.contains("every row re-hashed to find the checkpoint"),
        "{by_hash}"
    );

    let foreign = witnessed.env.write(
        "foreign.json",
        format!(r#"{{"id": {early_row}, "hash": "{}"}}"#, "ab".repeat(32)),
    );
    let foreign = foreign.to_str().unwrap();
    for mode in [&[][..], &[tail][..]] {
        let named = verify_fails(&[mode, &["--checkpoint", foreign]].concat());
        assert!(
            named.contains(&format!(
                "does not contain checkpoint {} at row {early_row}",
                "ab".repeat(32)
            )),
            "{mode:?}: {named}"
        );
    }

    witnessed.env.tamper(&format!(
        "UPDATE audit_log SET actor = 'mallory' WHERE id = {}",
        early_row - 1
    ));
    verify(&[tail, "--checkpoint", &early]);
    let whole = verify_fails(&["--checkpoint", &early]);
    assert!(whole.contains(&format!("row {}", early_row - 1)), "{whole}");
    witnessed.env.tamper(&format!(
        "UPDATE audit_log SET actor = 'mallory' WHERE id = {}",
        early_row + 1
    ));
    let between = verify_fails(&[tail, "--checkpoint", &early]);
    assert!(
        between.contains(&format!("row {}", early_row + 1)),
        "{between}"
    );
    let unchecked = verify(&[tail]);
    assert!(unchecked.contains("their pages not read"), "{unchecked}");
}

contract_tests!(
    heads_from_writing_commands_verify_and_prove,
    a_checkpoint_is_held_in_the_walk_that_holds_the_heads,
    a_witness_url_is_handed_every_head,
    a_rewritten_tail_passes_the_chain_but_not_the_heads,
    rows_cut_from_the_end_are_named,
    a_broken_link_after_the_newest_head_is_not_signed,
    an_altered_reordered_or_foreign_heads_file_is_named,
);

/// From the newest head only the rows after it are read, so the frequent check stays cheap
/// on a store of any size: a damaged page of rows the head covers is left to the whole
/// verify, which names it, and the tail check says it did not read them.
#[test]
fn from_the_newest_head_only_the_tail_is_read() {
    let witnessed = Witnessed::new();
    let keys: String = (0..300).map(|i| format!("tenant-{i}\n")).collect();
    let keys = witnessed.env.write("keys.txt", keys);
    witnessed.ok(&["eval", "--all", "--contexts-file", keys.to_str().unwrap()]);
    witnessed
        .env
        .ok(&["eval", "ingest", "--context", "unsigned"]);
    let conn = witnessed.env.sql();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    // The leftmost leaf of the log: its first rows, long since signed.
    let first_leaf: i64 = conn
        .query_row(
            "SELECT pageno FROM dbstat WHERE name = 'audit_rows' AND pagetype = 'leaf' \
             ORDER BY path LIMIT 1",
            [],
            |row| row.get(0),
        )
        .unwrap();
    drop(conn);
    let mut bytes = std::fs::read(&witnessed.env.db).unwrap();
    let page = 4096;
    let first_leaf = usize::try_from(first_leaf).unwrap();
    bytes[(first_leaf - 1) * page..first_leaf * page].fill(0xA5);
    std::fs::write(&witnessed.env.db, bytes).unwrap();

    let tail = witnessed.verify_from_newest_head();
    assert!(
        tail.contains("taken as signed, their pages not read"),
        "{tail}"
    );
    let whole = witnessed.env.fails(&["audit", "verify"]);
    assert!(whole.contains("malformed"), "{whole}");
}

#[test]
fn a_signing_key_needs_a_heads_file_and_a_bad_key_writes_nothing() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let before = env.snapshot();
    let key = env.write("key.pem", "not a key");
    let message = env
        .cmd()
        .env("FLAGSTORE_SIGNING_KEY", &key)
        .args(["eval", "ingest", "--context", "k"])
        .output()
        .unwrap();
    assert_eq!(message.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&message.stderr).contains("--signing-key needs --heads"));
    let message = env
        .cmd()
        .args(["--signing-key", key.to_str().unwrap(), "--heads", "h.jsonl"])
        .args(["eval", "ingest", "--context", "k"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&message.stderr);
    assert!(
        said.contains("key.pem: not an Ed25519 private key"),
        "{said}"
    );
    assert_eq!(env.snapshot(), before);
    assert!(!env.dir.path().join("h.jsonl").exists());
}

/// A heads file is appended to and read back (the newest head is checked before anything is
/// written): a FIFO blocked the command in `open` for ever, and `/dev/null` took every head and
/// gave none back. Each, and a directory, is named before a store is made.
#[test]
fn a_heads_path_that_is_not_a_file_is_refused_before_anything_is_written() {
    let env = Env::new();
    let signing = env.signing();
    let fifo = env.fifo("heads.fifo");
    let dir = env.dir.path().join("heads-dir");
    std::fs::create_dir(&dir).unwrap();
    let new_store = env.dir.path().join("new.db");
    for (heads, kind) in [
        (dir.as_path(), "a directory"),
        (fifo.as_path(), "a FIFO"),
        (Path::new("/dev/null"), "a character device"),
    ] {
        let output = assert_cmd::Command::from_std(env.std_cmd())
            .env("FLAGSTORE_SIGNING_KEY", &signing.key)
            .env("FLAGSTORE_HEADS", heads)
            .arg("--db")
            .arg(&new_store)
            .args(["flag", "create", "f"])
            .timeout(std::time::Duration::from_secs(20))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{said}");
        assert_eq!(
            said.trim_end(),
            format!(
                "flagstore: {}: is {kind}, not a file: heads are appended to a file and read back",
                heads.display()
            )
        );
        assert!(!new_store.exists());
    }
}

/// A key or a checkpoint is a few hundred bytes. A path given by mistake (the database, a
/// device) is refused for its size, having read no more than the limit, not taken into memory
/// whole: `/dev/zero` would never end.
#[test]
fn a_key_or_checkpoint_path_naming_something_large_is_refused_unread() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let before = env.snapshot();
    let large = env.write("large.bin", vec![b'-'; 1 << 20]);
    let large = large.to_str().unwrap();
    for path in [large, "/dev/zero"] {
        let said = env.fails(&[
            "--signing-key",
            path,
            "--heads",
            "h.jsonl",
            "flag",
            "create",
            "f",
        ]);
        assert!(
            said.contains(&format!("{path}: larger than 4096 bytes: not a key")),
            "{said}"
        );
        let said = env.fails(&[
            "audit",
            "verify",
            "--heads",
            "h.jsonl",
            "--public-key",
            path,
        ]);
        assert!(
            said.contains(&format!("{path}: larger than 4096 bytes: not a key")),
            "{said}"
        );
        let said = env.fails(&["audit", "verify", "--checkpoint", path]);
        assert!(
            said.contains(&format!(
                "{path}: not a checkpoint file: larger than 4096 bytes"
            )),
            "{said}"
        );
    }
    assert_eq!(env.snapshot(), before);
    assert!(!env.dir.path().join("h.jsonl").exists());
}

/// `chattr +a` on a file for as long as it lives: the append-only attribute, which lets a
/// process append and nothing else (not even root may shorten the file while it is set).
struct AppendOnly<'a>(&'a std::path::Path);

impl<'a> AppendOnly<'a> {
    /// Why not, where the attribute cannot be set (not root, a file system without it).
    fn set(path: &'a std::path::Path) -> Result<AppendOnly<'a>, String> {
        match Command::new("chattr").arg("+a").arg(path).output() {
            Ok(done) if done.status.success() => Ok(AppendOnly(path)),
            Ok(done) => Err(String::from_utf8_lossy(&done.stderr).trim_end().to_string()),
            Err(e) => Err(format!("chattr: {e}")),
        }
    }
}

impl Drop for AppendOnly<'_> {
    /// Clears the attribute, or the temporary directory could not be removed; a failure to
    /// is reported unless the test is failing already (a second panic would abort the run).
    fn drop(&mut self) {
        let cleared = Command::new("chattr").arg("-a").arg(self.0).status();
        let cleared = cleared.is_ok_and(|status| status.success());
        assert!(
            cleared || std::thread::panicking(),
            "chattr -a {}",
            self.0.display()
        );
    }
}

/// The README recommends an append-only mount for the heads file. A publisher stopped while
/// writing a head leaves a line cut short; the next one must carry on without shortening the
/// file, and every reader must take the line for what it is: no head.
#[test]
fn a_line_cut_short_in_an_append_only_heads_file_is_sealed_not_cut() {
    let witnessed = Witnessed::new();
    let heads = &witnessed.signing.heads;
    let whole = std::fs::read(heads).unwrap();
    let signed_before = witnessed.heads().last().unwrap()["size"].as_u64().unwrap();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(heads)
        .unwrap();
    std::io::Write::write_all(&mut file, br#"{"size":99,"root":"ab"#).unwrap();
    drop(file);
    let append_only = match AppendOnly::set(heads) {
        Ok(append_only) => append_only,
        Err(why) => {
            eprintln!("skipped: the append-only heads file: chattr +a failed: {why}");
            return;
        }
    };
    let cut_line = whole.iter().filter(|&&b| b == b'\n').count() + 1;
    // Until a publisher seals it, the line may as well be a head being written as a reviewer
    // reads: it is not called cut short.
    let unfinished = format!(
        "; line {cut_line} has no line break yet (a head being written, or one whose \
         publisher stopped): not a head"
    );
    let said = witnessed.verify();
    assert!(said.trim_end().ends_with(&unfinished), "{said}");
    let (code, said) = witnessed.script(&["--heads", heads.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.ends_with(&unfinished), "{said}");
    let cut_short = format!(
        "; line {cut_line} was cut short (a publisher stopped while writing it): not a head"
    );

    witnessed.ok(&["eval", "--all", "--context", "after-the-crash"]);
    witnessed.ok(&["eval", "--all", "--context", "and-again"]);
    let now = std::fs::read(heads).unwrap();
    assert!(now.starts_with(&whole), "the heads signed before were kept");
    let later: Vec<&[u8]> = now[whole.len()..].split(|&b| b == b'\n').collect();
    assert_eq!(later[0], br#"{"size":99,"root":"ab"#, "sealed as it was");
    assert_eq!(
        later.len(),
        4,
        "the sealed line, two heads, and nothing after the last break"
    );
    let newest: serde_json::Value = serde_json::from_slice(later[2]).unwrap();
    assert_eq!(newest["size"], witnessed.rows());

    let said = witnessed.verify();
    assert!(
        said.contains(&format!("covers rows 1..={}", witnessed.rows()))
            && said.trim_end().ends_with(&cut_short),
        "{said}"
    );
    assert!(
        witnessed
            .verify_from_newest_head()
            .contains("audit log verified")
    );
    let (code, said) = witnessed.script(&["--heads", heads.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.ends_with(&cut_short), "{said}");
    // Proofs find their heads on either side of the sealed line.
    let heads = heads.to_str().unwrap();
    for size in [
        None,
        Some(signed_before),
        Some(newest["size"].as_u64().unwrap()),
    ] {
        let size = size.map(|size| size.to_string());
        let mut args = vec!["audit", "prove", "1", "--heads", heads];
        args.extend(size.iter().flat_map(|size| ["--size", size.as_str()]));
        let proof = witnessed.env.write("proof.json", witnessed.ok(&args));
        let (code, said) = witnessed.script(&[proof.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{args:?}: {said}");
    }
    drop(append_only);
}

/// A reviewer may share the operator's environment but never the private key, which is the
/// operator's alone: every command that only reads works without it and leaves the store as
/// it was, and one that writes is still refused before it writes.
#[test]
fn commands_that_only_read_need_no_signing_key() {
    let witnessed = Witnessed::new();
    let path = |name: &str| witnessed.env.dir.path().join(name).display().to_string();
    let (heads, public_key) = (path("heads.jsonl"), path("heads.key.pub"));
    let (missing_key, pipeline) = (path("operators-only.key"), path("pipeline.json"));
    let (backup, copy) = (path("backup.db"), path("copy.db"));
    let reviewer = [
        ("FLAGSTORE_SIGNING_KEY", missing_key.as_str()),
        ("FLAGSTORE_HEADS", heads.as_str()),
    ];
    let before = witnessed.env.snapshot();
    let heads_before = std::fs::read(&heads).unwrap();
    let reading: [&[&str]; 17] = [
        &[
            "audit",
            "verify",
            "--heads",
            &heads,
            "--public-key",
            &public_key,
        ],
        &["audit", "prove", "1", "--heads", &heads],
        &["audit", "--limit", "1"],
        &["audit", "export"],
        &["audit", "checkpoint"],
        &["explain", "enrich", "--context", "b"],
        &["history", "enrich"],
        &["flag", "list"],
        &["flag", "list", "--stale"],
        &["flag", "show", "enrich"],
        &["export"],
        &["assignments", "list"],
        &["check"],
        &["token", "list"],
        &["import", "--dry-run", &pipeline],
        &["backup", "--output", &backup],
        &["copy", "--to", &copy],
    ];
    for args in reading {
        let output = witnessed.cmd().envs(reviewer).args(args).output().unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(witnessed.env.snapshot(), before);
    assert_eq!(std::fs::read(&heads).unwrap(), heads_before);

    let refused = witnessed.fails_with(&reviewer, &["eval", "ingest", "--context", "new"]);
    assert!(refused.contains("operators-only.key"), "{refused}");
    assert_eq!(witnessed.env.snapshot(), before);
}

/// A heads file holds one key's heads. A new key (the old one retired or exposed) is refused
/// there, naming both keys, and publishes to a new heads file instead, whose first head covers
/// every row; the old file still holds under the old public key.
#[test]
fn a_new_key_signs_into_a_new_heads_file_from_row_one() {
    let witnessed = Witnessed::new();
    let new_key = witnessed.env.dir.path().join("new.key");
    witnessed
        .env
        .ok(&["keys", "generate", new_key.to_str().unwrap()]);
    let new_key = new_key.to_str().unwrap();
    let old_heads = witnessed.signing.heads.to_str().unwrap();
    let new_heads = witnessed.env.dir.path().join("new-heads.jsonl");
    let new_heads = new_heads.to_str().unwrap();
    let before = witnessed.env.snapshot();

    let old_heads_kept = std::fs::read(old_heads).unwrap();
    let with_new_key = [("FLAGSTORE_SIGNING_KEY", new_key)];
    let new_store = witnessed.env.dir.path().join("new-store.db");
    let pipeline = witnessed.env.dir.path().join("pipeline.json");
    let (new_store, pipeline) = (new_store.to_str().unwrap(), pipeline.to_str().unwrap());
    for command in [
        &["eval", "ingest", "--context", "k"][..],
        &["serve", "--listen", "127.0.0.1:0", "--no-auth"],
        &["--db", new_store, "import", pipeline],
    ] {
        let refused = witnessed.fails_with(&with_new_key, command);
        assert!(
            refused.contains("newest head: signed by key ")
                && refused.contains("not by this signing key")
                && refused.contains("a new key publishes to a new heads file"),
            "{refused}"
        );
        // Refused before writing: no record, no head, not even a new store.
        assert_eq!(witnessed.env.snapshot(), before);
        assert_eq!(std::fs::read(old_heads).unwrap(), old_heads_kept);
        assert!(!std::path::Path::new(new_store).exists(), "{command:?}");
    }

    let rotated = [
        ("FLAGSTORE_SIGNING_KEY", new_key),
        ("FLAGSTORE_HEADS", new_heads),
    ];
    let output = witnessed
        .cmd()
        .envs(rotated)
        .args(["eval", "ingest", "--context", "k"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_ne!(witnessed.env.snapshot(), before);
    let rows = witnessed.rows();
    let new_public = format!("{new_key}.pub");
    let said = witnessed.env.ok(&[
        "audit",
        "verify",
        "--heads",
        new_heads,
        "--public-key",
        &new_public,
    ]);
    assert!(
        said.contains("the one signed head of")
            && said.contains(&format!("covers rows 1..={rows}")),
        "{said}"
    );
    // The old heads still hold under the old key: the rows after them are not under one.
    assert_eq!(std::fs::read(old_heads).unwrap(), old_heads_kept);
    let said = witnessed.verify();
    assert!(
        said.contains(&format!(
            "rows {rows}..={rows} are not yet under a signed head"
        )),
        "{said}"
    );
}
