#!/usr/bin/env python3
"""Adds what cargo-generate-rpm 0.21 cannot write to portd's .rpm: the
%changelog (CHANGELOGTIME/NAME/TEXT), Packager, BuildHost and Group tags.

Usage: finish-rpm.py PACKAGE.rpm CHANGELOG PACKAGER

CHANGELOG uses the %changelog syntax of a spec file:

    * Thu Nov 26 2026 Name <email> - 0.1.0-1
    - what changed

The main header is re-serialised with the new tags, as rpm lays a header
out (index sorted by tag behind the immutable-region entry, data in index
order, the region trailer last), and the header digests (SHA1, SHA256) and
the header+payload size in the signature header are updated; the payload is
untouched, so its digest stays valid. `rpm -K` checks the result.
"""

import calendar
import hashlib
import os
import struct
import sys
import time

MAGIC = b"\x8e\xad\xe8\x01\x00\x00\x00\x00"
LEAD_SIZE = 96

# Header data types (rpm's rpmTagType).
CHAR, INT8, INT16, INT32, INT64, STRING, BIN, STRING_ARRAY, I18NSTRING = 1, 2, 3, 4, 5, 6, 7, 8, 9
ALIGN = {INT16: 2, INT32: 4, INT64: 8}
SIZE = {CHAR: 1, INT8: 1, INT16: 2, INT32: 4, INT64: 8, BIN: 1}

# Tags.
HEADERIMMUTABLE = 63
BUILDHOST, PACKAGER, GROUP = 1007, 1015, 1016
CHANGELOGTIME, CHANGELOGNAME, CHANGELOGTEXT = 1080, 1081, 1082
SIG_SHA1, SIG_SHA256, SIG_SIZE = 269, 273, 1000


def read_header(data, offset):
    """Returns ({tag: (type, count, bytes)}, region_tag, end offset)."""
    if data[offset:offset + 8] != MAGIC:
        sys.exit(f"finish-rpm: no header magic at offset {offset}")
    count, size = struct.unpack(">II", data[offset + 8:offset + 16])
    index = offset + 16
    store = index + 16 * count
    entries = {}
    region = None
    for i in range(count):
        tag, typ, off, n = struct.unpack(">iiii", data[index + 16 * i:index + 16 * i + 16])
        if i == 0 and typ == BIN and n == 16 and tag in (62, 63):
            region = tag  # the trailer is rebuilt on write
            continue
        start = store + off
        if typ in SIZE:
            end = start + SIZE[typ] * n
        elif typ in (STRING, STRING_ARRAY, I18NSTRING):
            end = start
            for _ in range(n if typ != STRING else 1):
                end = data.index(b"\0", end) + 1
        else:
            sys.exit(f"finish-rpm: unknown type {typ} of tag {tag}")
        entries[tag] = (typ, n, data[start:end])
    return entries, region, store + size


def write_header(entries, region):
    tags = sorted(entries)
    index = []
    store = bytearray()
    for tag in tags:
        typ, n, blob = entries[tag]
        pad = (-len(store)) % ALIGN.get(typ, 1)
        store += b"\0" * pad
        index.append(struct.pack(">iiii", tag, typ, len(store), n))
        store += blob
    if region is not None:
        total = len(tags) + 1
        trailer = struct.pack(">iiii", region, BIN, -16 * total, 16)
        index.insert(0, struct.pack(">iiii", region, BIN, len(store), 16))
        store += trailer
    return MAGIC + struct.pack(">II", len(index), len(store)) + b"".join(index) + bytes(store)


def strings(*values):
    return b"".join(v.encode() + b"\0" for v in values)


def parse_changelog(path):
    """[(time, name, text)], newest first, as rpmbuild stores them."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("* "):
                words = line[2:].split(" ", 4)  # Thu Nov 26 2026 rest
                when = time.strptime(" ".join(words[1:4]), "%b %d %Y")
                # rpmbuild stores the day at 12:00 UTC.
                stamp = calendar.timegm(when) + 12 * 3600
                entries.append([stamp, words[4], []])
            elif line.strip() and entries:
                entries[-1][2].append(line)
    if not entries:
        sys.exit(f"finish-rpm: no entry in {path}")
    return [(t, name, "\n".join(text)) for t, name, text in entries]


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    rpm_path, changelog_path, packager = sys.argv[1:]
    data = open(rpm_path, "rb").read()

    sig, sig_region, sig_end = read_header(data, LEAD_SIZE)
    main_start = sig_end + (-sig_end) % 8
    head, region, main_end = read_header(data, main_start)
    payload = data[main_end:]

    log = parse_changelog(changelog_path)
    head[CHANGELOGTIME] = (INT32, len(log), b"".join(struct.pack(">I", t) for t, _, _ in log))
    head[CHANGELOGNAME] = (STRING_ARRAY, len(log), strings(*(n for _, n, _ in log)))
    head[CHANGELOGTEXT] = (STRING_ARRAY, len(log), strings(*(x for _, _, x in log)))
    head[PACKAGER] = (STRING, 1, strings(packager))
    head[BUILDHOST] = (STRING, 1, strings(os.uname().nodename))
    head[GROUP] = (I18NSTRING, 1, strings("System Environment/Daemons"))
    header = write_header(head, region)

    # Same lengths as before (hex digests, one int32), so the signature
    # header keeps its size and padding.
    for tag, value in (
        (SIG_SHA1, strings(hashlib.sha1(header).hexdigest())),
        (SIG_SHA256, strings(hashlib.sha256(header).hexdigest())),
        (SIG_SIZE, struct.pack(">I", len(header) + len(payload))),
    ):
        if tag not in sig or len(sig[tag][2]) != len(value):
            sys.exit(f"finish-rpm: unexpected signature tag {tag} in {rpm_path}")
        sig[tag] = (sig[tag][0], sig[tag][1], value)
    signature = write_header(sig, sig_region)
    if len(signature) != sig_end - LEAD_SIZE:
        sys.exit("finish-rpm: the signature header changed size")

    tmp = rpm_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data[:LEAD_SIZE] + signature + data[sig_end:main_start] + header + payload)
    os.replace(tmp, rpm_path)


if __name__ == "__main__":
    main()
