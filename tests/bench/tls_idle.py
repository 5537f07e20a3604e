#!/usr/bin/env python3
"""Idle TLS keep-alive connections, for tls.sh (adapted from ../shared/bench/idle.py):
open N TCP connections to HOST:PORT, then on each one a full TLS handshake (SNI and verified
name: localhost, certificate checked against CA_FILE) and one HTTP/1.1 keep-alive request, then
hold them all idle. Prints 'open K failed F tls=VERSION' once they are idle (SETTLE seconds after
the last response, so the server's RSS can be read), waits for a line on stdin, then closes them
all and prints 'still-open K' (connections the server had not closed by then; it should be all).
Usage: tls_idle.py HOST PORT N CA_FILE [SETTLE]"""
import socket, ssl, sys, time

host, port, n, cafile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
settle = float(sys.argv[5]) if len(sys.argv) > 5 else 0.5
ctx = ssl.create_default_context(cafile=cafile)  # OPENSSL_CONF (tls.sh's TLS=1.2) applies here too
req = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"


def one_response(s):
    """Reads one response (head and Content-Length body); False if the server closed instead."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            return False
        body += chunk
    return head.startswith(b"HTTP/1.1 200")


raw, conns, failed, version = [], [], 0, "-"
for _ in range(n):  # TCP first, as idle.py does, then the handshakes one after the other
    s = socket.socket()
    try:
        s.connect((host, port))
        raw.append(s)
    except OSError:
        failed += 1
        s.close()
for s in raw:
    s.settimeout(10)
    try:
        t = ctx.wrap_socket(s, server_hostname="localhost")  # full handshake: no session is reused
        t.sendall(req)
        if not one_response(t):
            raise OSError("no 200 response")
        version = t.version()
        conns.append(t)
    except (OSError, ssl.SSLError):
        failed += 1
        s.close()
time.sleep(settle)
print(f"open {len(conns)} failed {failed} tls={version}", flush=True)
sys.stdin.readline()  # the harness reads RSS, then lets us go
still = 0
for t in conns:  # a connection the server closed reads EOF (or an error) at once
    t.setblocking(False)
    try:
        still += 0 if t.recv(1) == b"" else 1
    except ssl.SSLWantReadError:
        still += 1
    except (OSError, ssl.SSLError):
        pass
    t.close()
print(f"still-open {still}", flush=True)
