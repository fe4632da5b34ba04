#!/usr/bin/env python3
"""Check flagstore's signed tree heads and Merkle proofs with Python's standard library and
the openssl command (for Ed25519 signatures): a reviewer installs nothing of flagstore's.

Usage:
  python3 verify_tree_proof.py --public-key heads.key.pub --heads heads.jsonl
  python3 verify_tree_proof.py --public-key heads.key.pub PROOF.json [--heads heads.jsonl]

With --heads alone: every head of the file is signed by the key, its peaks make its root, and
each is larger than the one before. With a proof (the JSON `flagstore audit prove` prints): the
proof holds for its root (RFC 9162 2.1.3.2 inclusion, 2.1.4.2 consistency), and the signed
head printed with it covers exactly that root and size; for a consistency proof, given
--heads, the earlier root is that of the file's signed head of that size. A row's leaf is the
row's `hash` column, which scripts/verify_audit_chain.py recomputes from the row.

Prints what holds and exits 0, or names what does not on stderr and exits 2.
"""
import argparse
import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile

# DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): the raw key's 32 bytes follow.
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


def fail(message):
    print(f"does not verify: {message}", file=sys.stderr)
    sys.exit(2)


def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def leaf(data):
    return hashlib.sha256(b"\x00" + data).digest()


def unhex(where, text):
    try:
        value = bytes.fromhex(text)
    except (TypeError, ValueError):
        fail(f"{where}: {text!r} is not hex")
    if len(value) != 32:
        fail(f"{where}: {text!r} is not 32 bytes")
    return value


def raw_public_key(path):
    with open(path, encoding="ascii") as pem:
        body = "".join(line.strip() for line in pem if not line.startswith("-----"))
    der = base64.b64decode(body)
    if not der.startswith(ED25519_SPKI_PREFIX) or len(der) != len(ED25519_SPKI_PREFIX) + 32:
        fail(f"{path}: not an Ed25519 public key")
    return der[len(ED25519_SPKI_PREFIX):]


def signed_text(head):
    return (f"flagstore tree head v1\nsize {head['size']}\nroot {head['root']}\n"
            f"last {head['last']}\ntime {head['time']}\n").encode()


def check_head(where, head, public_key_path, key_id):
    if head.get("key") != key_id:
        fail(f"{where}: signed by key {head.get('key')}, not by the key given ({key_id})")
    try:
        signature = bytes.fromhex(head["signature"])
    except (KeyError, TypeError, ValueError):
        fail(f"{where}: the signature is not hex")
    with tempfile.TemporaryDirectory() as scratch:
        message_path = os.path.join(scratch, "head")
        signature_path = os.path.join(scratch, "signature")
        with open(message_path, "wb") as message:
            message.write(signed_text(head))
        with open(signature_path, "wb") as signature_file:
            signature_file.write(signature)
        checked = subprocess.run(
            ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", public_key_path, "-rawin",
             "-in", message_path, "-sigfile", signature_path],
            capture_output=True, text=True, check=False)
    if checked.returncode != 0:
        fail(f"{where}: the signature does not match the head (the head was altered)")
    peaks = [unhex(f"{where}: peak", peak) for peak in head["peaks"]]
    if head["size"] < 1 or len(peaks) != bin(head["size"]).count("1"):
        fail(f"{where}: {len(peaks)} peaks for a tree of {head['size']} rows")
    root = peaks[-1]
    for peak in reversed(peaks[:-1]):
        root = node(peak, root)
    if root != unhex(f"{where}: root", head["root"]):
        fail(f"{where}: its peaks do not make its root")


def verify_inclusion(index, size, leaf_hash, proof, root):
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(first, second, first_root, second_root, proof):
    if first > second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof
    if not proof:
        return False
    if first & (first - 1) == 0:
        proof = [first_root] + proof
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == first_root and sr == second_root


def read_heads(path):
    """The heads of a heads file with their line numbers, and the lines that are not heads:
    those cut short (how many, and the first ten by number), and the last line when it has no
    line break yet. A publisher stopped while writing a line leaves it without the brace that
    ends every head (the next publisher ends it with a line break); it was never published.
    Until then the last line may as well be a head being written as the file is read."""
    heads, cut_short = [], [0, [], None]
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.endswith(b"\n"):
                cut_short[2] = number
                continue
            if not line.endswith(b"}\n"):
                cut_short[0] += 1
                if len(cut_short[1]) < 10:
                    cut_short[1].append(number)
                continue
            try:
                heads.append((number, json.loads(line)))
            except ValueError as error:
                fail(f"{path}: line {number}: not a signed head ({error})")
    return heads, cut_short


def describe_cut_short(count, first, unfinished):
    named = ", ".join(str(number) for number in first)
    if count == 0:
        said = ""
    elif count == 1:
        said = f"; line {named} was cut short (a publisher stopped while writing it): not a head"
    else:
        more = f" and {count - len(first)} more" if count > len(first) else ""
        said = (f"; lines {named}{more} were cut short (publishers stopped while writing them): "
                "not heads")
    if unfinished is not None:
        said += (f"; line {unfinished} has no line break yet (a head being written, or one whose "
                 "publisher stopped): not a head")
    return said


def check_heads(path, public_key_path, key_id):
    heads, cut_short = read_heads(path)
    before = 0
    for number, head in heads:
        check_head(f"{path}: line {number}", head, public_key_path, key_id)
        if head["size"] <= before:
            fail(f"{path}: line {number}: size {head['size']} is not above the head before it "
                 f"({before})")
        before = head["size"]
    return heads, cut_short


def check_proof(path, public_key_path, key_id, heads_path):
    with open(path, encoding="utf-8") as text:
        proof = json.load(text)
    size, root = proof["size"], unhex("root", proof["root"])
    hashes = [unhex(f"{path}: proof[{i}]", h) for i, h in enumerate(proof["proof"])]
    if proof["kind"] == "inclusion":
        row = proof["row"]
        held = verify_inclusion(row - 1, size, leaf(unhex("leaf", proof["leaf"])), hashes, root)
        what = f"row {row} (hash {proof['leaf']}) is in the tree of rows 1..={size}"
    elif proof["kind"] == "consistency":
        old_size, old_root = proof["old_size"], unhex("old_root", proof["old_root"])
        held = verify_consistency(old_size, size, old_root, root, hashes)
        what = f"the tree of rows 1..={size} extends that of rows 1..={old_size}"
        if heads_path:
            earlier = [head for _, head in check_heads(heads_path, public_key_path, key_id)[0]
                       if head["size"] == old_size]
            if not earlier:
                fail(f"{heads_path}: no signed head of size {old_size} to hold the proof to")
            if unhex("old root", earlier[0]["root"]) != old_root:
                fail(f"{path}: old_root is not the root {heads_path} signed at size {old_size}")
            what += f", as signed at {earlier[0]['time']}"
    else:
        fail(f"{path}: unknown proof kind {proof['kind']!r}")
    if not held:
        fail(f"{path}: the proof does not hold: {what} is not shown")
    head = proof.get("head")
    if head is None:
        fail(f"{path}: the proof holds but no signed head came with it: its root is only the "
             "store's word (run `flagstore audit prove` with --heads)")
    check_head(f"{path}: head", head, public_key_path, key_id)
    if head["size"] != size or unhex("head root", head["root"]) != root:
        fail(f"{path}: the signed head covers {head['size']} rows with another root")
    print(f"proof verified: {what}, signed {head['time']} by key {key_id}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--public-key", required=True, help="the heads key's public half (PEM)")
    parser.add_argument("--heads", help="a heads file (JSON Lines) to check")
    parser.add_argument("proofs", nargs="*", help="proofs printed by `flagstore audit prove`")
    args = parser.parse_args()
    key_id = hashlib.sha256(raw_public_key(args.public_key)).hexdigest()[:16]
    if not args.proofs:
        if not args.heads:
            parser.error("give a heads file, proofs, or both")
        heads, cut_short = check_heads(args.heads, args.public_key, key_id)
        newest = f", the newest covers rows 1..={heads[-1][1]['size']}" if heads else ""
        passed = describe_cut_short(*cut_short)
        counted = "1 signed head" if len(heads) == 1 else f"{len(heads)} signed heads"
        print(f"heads verified: {counted} by key {key_id}{newest}{passed}")
    for path in args.proofs:
        check_proof(path, args.public_key, key_id, args.heads)


if __name__ == "__main__":
    main()
