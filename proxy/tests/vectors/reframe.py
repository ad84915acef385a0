#!/usr/bin/env python3
"""Re-frame a captured single-record ClientHello into several TLS records.

Usage: reframe.py IN.bin OUT.bin SIZE [SIZE...]
Takes the handshake message out of the one handshake record in IN.bin and writes it
to OUT.bin as consecutive handshake records whose fragments have the given sizes (the
last record takes the rest). The bytes of the handshake message are unchanged, which is
what a client does when its hello is longer than it wants one record to be.
"""
import struct
import sys


def main() -> None:
    src, out, sizes = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3:]]
    data = open(src, "rb").read()
    content_type, version, length = struct.unpack(">BHH", data[:5])
    assert content_type == 0x16, "not a handshake record"
    message = data[5 : 5 + length]
    assert len(message) == length, "record is truncated"
    records, offset = b"", 0
    for size in sizes + [len(message)]:
        fragment = message[offset : offset + size]
        offset += len(fragment)
        if fragment:
            records += struct.pack(">BHH", 0x16, version, len(fragment)) + fragment
    open(out, "wb").write(records)
    print(f"{out}: {len(records)} bytes, fragments {sizes} + rest")


if __name__ == "__main__":
    main()
