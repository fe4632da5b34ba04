#!/usr/bin/env python3
"""Verify a flagstore audit log's hash chain with nothing but Python's standard library.

Usage: python3 verify_audit_chain.py flagstore.db

Prints "audit log verified: N rows, head HASH" and exits 0, or names the first row that does
not verify on stderr and exits 2. It uses no assert, so python3 -O checks as much.
"""
import hashlib
import sqlite3
import sys

GENESIS = "0" * 64


def encode(value):
    if value is None:
        return b"N"
    if isinstance(value, int):
        return b"I%d;" % value
    data = value.encode("utf-8")
    return b"T%d:" % len(data) + data


def fail(message):
    print(f"audit log does not verify: {message}", file=sys.stderr)
    sys.exit(2)


def main(path):
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = db.execute(
        "SELECT id, ts, kind, actor, action, flag, context_key, result, source, reason, detail,"
        " prev_hash, hash FROM audit_log ORDER BY id"
    )
    head, expected_id = GENESIS, 1
    for *columns, prev_hash, stored_hash in rows:
        row_id = columns[0]
        if row_id != expected_id:
            fail(f"row {row_id}: expected row {expected_id} next (rows missing)")
        if prev_hash != head:
            fail(f"row {row_id}: prev_hash does not match the previous row's hash")
        digest = hashlib.sha256(head.encode() + b"".join(map(encode, columns))).hexdigest()
        if digest != stored_hash:
            fail(f"row {row_id}: hash does not match the row's contents")
        head, expected_id = stored_hash, expected_id + 1
    print(f"audit log verified: {expected_id - 1} rows, head {head}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
