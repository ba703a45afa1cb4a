#!/usr/bin/env python3
"""Open N mutual-TLS connections and hold them idle (for the terminator's RSS).

    hold-idle.py HOST PORT N CA CERT KEY SERVER_NAME READYFILE

Each connection does a full TLS 1.3 handshake with the client certificate and
one 1-byte echo through the backend (so the terminator has verified the client
and connected upstream), then stays open without traffic. When all N are up it
writes "OK <n>" to READYFILE (or "FAIL <n> <error>" if one fails) and sleeps
until it is killed (bounded by a 120 s safety timer). Connections are opened
sequentially, one at a time.
"""
import signal
import socket
import ssl
import sys
import time

host, port, n, ca, cert, key, name, ready = sys.argv[1:9]
port, n = int(port), int(n)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.load_verify_locations(ca)
ctx.load_cert_chain(cert, key)
signal.signal(signal.SIGALRM, lambda *_: sys.exit(0))
held = []
status = None
t0 = time.monotonic()
try:
    for i in range(n):
        raw = socket.create_connection((host, port), timeout=10)
        s = ctx.wrap_socket(raw, server_hostname=name)
        s.sendall(b"x")
        got = s.recv(1)
        if got != b"x":
            raise RuntimeError(f"connection {i}: no echo ({got!r})")
        held.append(s)
    status = f"OK {len(held)} {time.monotonic() - t0:.1f}s"
except Exception as e:  # noqa: BLE001 - reported to the caller
    status = f"FAIL {len(held)} {type(e).__name__}: {e}"
with open(ready, "w") as f:
    f.write(status + "\n")
signal.alarm(120)
while True:
    time.sleep(1)
