#!/usr/bin/env python3
"""Record the first bytes a TLS client sends, for the ClientHello test vectors.

Usage: capture.py PORT OUT.bin
Listens on 127.0.0.1:PORT (loopback only), accepts one connection, reads until the
client has been quiet for one second (a TLS client waits for the ServerHello after
its ClientHello, so silence marks the end of the hello), writes what it got to
OUT.bin and closes the connection without answering.
"""
import socket
import sys


def main() -> None:
    port, out = int(sys.argv[1]), sys.argv[2]
    with socket.create_server(("127.0.0.1", port)) as server:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(1.0)
            data = b""
            while len(data) < 64 * 1024:
                try:
                    chunk = conn.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                data += chunk
    with open(out, "wb") as f:
        f.write(data)
    print(f"{out}: {len(data)} bytes")


if __name__ == "__main__":
    main()
