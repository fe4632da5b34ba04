#!/usr/bin/env python3
"""Verify a flagstore audit log's hash chain with nothing but Python's standard library.

Usage: python3 verify_audit_chain.py flagstore.db
       python3 verify_audit_chain.py audit.jsonl    (written by `flagstore audit export`)

Prints "audit log verified: N rows, head HASH" and exits 0, or names the first row that does
not verify on stderr and exits 2. It uses no assert, so python3 -O checks as much. It opens the
file read-only, and where it may not write beside it (a reviewer's copy), as immutable: a WAL
a writer left beside it is then not read, and the line says so. An export is re-hashed from
its own lines, which carry exactly what each hash covers; one that starts after row 1 takes
its first row's prev_hash as given, and the line says which rows it checked.
"""
import hashlib
import json
import os
import sqlite3
import sys
import urllib.parse

GENESIS = "0" * 64
COLUMNS = ("id", "ts", "kind", "actor", "action", "flag", "context_key", "result", "source",
           "reason", "detail")


def fail(message):
    print(f"audit log does not verify: {message}", file=sys.stderr)
    sys.exit(2)


def encode(row_id, column, value):
    if value is None:
        return b"N"
    if isinstance(value, int) and not isinstance(value, bool):
        return b"I%d;" % value
    if isinstance(value, str):
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:  # read with surrogateescape: bytes that are not UTF-8
            fail(f"row {row_id}: {column} holds text that is not UTF-8")
        return b"T%d:" % len(data) + data
    kind = "BLOB" if isinstance(value, bytes) else type(value).__name__.upper()
    fail(f"row {row_id}: {column} holds a {kind}, not text, an integer or NULL")


def database_rows(path):
    writable = os.access(path, os.W_OK) and os.access(os.path.dirname(os.path.abspath(path)), os.W_OK)
    uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro" + ("" if writable else "&immutable=1")
    db = sqlite3.connect(uri, uri=True)
    db.text_factory = lambda data: data.decode("utf-8", "surrogateescape")
    rows = db.execute(
        "SELECT id, ts, kind, actor, action, flag, context_key, result, source, reason, detail,"
        " prev_hash, hash FROM audit_log ORDER BY id"
    )
    return rows, "" if writable else " (read-only, immutable: no writer's WAL read)"


def exported_rows(path):
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except ValueError as error:
                fail(f"line {number}: not an exported row ({error})")
            if not isinstance(row, dict) or set(row) != set(COLUMNS) | {"prev_hash", "hash"}:
                fail(f"line {number}: not an exported row (its fields are not the hashed ones)")
            yield tuple(row[column] for column in COLUMNS) + (row["prev_hash"], row["hash"])


def main(path):
    try:
        with open(path, "rb") as file:
            exported = not file.read(16).startswith(b"SQLite format 3\0")
    except OSError as error:
        fail(f"{path}: {error.strerror}")
    rows, how = (exported_rows(path), "") if exported else database_rows(path)
    head, expected_id, first_id = GENESIS, 1, None
    for *columns, prev_hash, stored_hash in rows:
        row_id = columns[0]
        if first_id is None and exported:
            head, expected_id = prev_hash, row_id  # where the export starts, as given
        first_id = first_id or row_id
        if row_id != expected_id:
            fail(f"row {row_id}: expected row {expected_id} next (rows missing)")
        if prev_hash != head:
            fail(f"row {row_id}: prev_hash does not match the previous row's hash")
        encoded = b"".join(encode(row_id, name, value) for name, value in zip(COLUMNS, columns))
        if hashlib.sha256(head.encode() + encoded).hexdigest() != stored_hash:
            fail(f"row {row_id}: hash does not match the row's contents")
        head, expected_id = stored_hash, expected_id + 1
    if first_id not in (None, 1):
        how += f" (rows {first_id}..{expected_id - 1} of an export, row {first_id}'s prev_hash as given)"
    print(f"audit log verified: {expected_id - (first_id or 1)} rows{how}, head {head}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
