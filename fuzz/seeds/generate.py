#!/usr/bin/env python3
"""Writes the seed corpus of each fuzz target into fuzz/seeds/TARGET/.

Seeds give libFuzzer a head start: valid inputs it would take a long time
to guess (a complete upgrade request, a masked frame). It mutates them into
the invalid ones. The files are committed; run this again after changing it.
"""

import json
import pathlib
import struct

HERE = pathlib.Path(__file__).parent

UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame, as a browser sends it (RFC 6455 5.2)."""
    mask = bytes([0x12, 0x34, 0x56, 0x78])
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n <= 125:
        head += bytes([0x80 | n])
    elif n <= 0xFFFF:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def text(s: str) -> bytes:
    return client_frame(0x1, s.encode())


def write(target: str, name: str, data: bytes) -> None:
    folder = HERE / target
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(data)


requests = {
    "join": {"type": "join", "name": "Ann"},
    "join_since": {"type": "join", "name": "Ann", "since": 42},
    "say": {"type": "say", "text": "hello :smile:"},
    "dm": {"type": "dm", "to": "Bob", "text": "psst"},
    "who": {"type": "who"},
    "nick": {"type": "nick", "name": "Annie"},
}
for name, request in requests.items():
    write("protocol", name, json.dumps(request).encode())
write("protocol", "unknown", b'{"type":"dance","extra":[1,{"a":null}]}')

write("http_head", "upgrade", UPGRADE + text("after the head"))
write("http_head", "healthz", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
write("http_head", "post", b"POST / HTTP/1.0\r\nContent-Length: 0\r\n\r\n")

for name, line in {
    "say": "hello",
    "dm": "dm Bob psst",
    "msg": "/msg Bob hi",
    "who": "/who",
    "nick": "/nick Annie",
    "help": "/help",
    "quit": "/quit\r\n",
    "slash": "//not a command",
}.items():
    write("command", name, line.encode())

# The connection target's header (see fuzz_targets/connection.rs): queue
# bound 64 KiB, messages up to 16 KiB, the peer hangs up at the end, and a
# script of chunks of 64 and 3 bytes, room for every write, and time steps
# of 0 and 100 ms.
HEADER = bytes([10, 10, 1, 63, 0xFF, 0xFF, 0, 2, 0xFF, 0xFF, 2])
session = (
    UPGRADE
    + text(json.dumps(requests["join"]))
    + text(json.dumps(requests["say"]))
    + client_frame(0x9, b"ping")
    + client_frame(0x1, b"frag", fin=False)
    + client_frame(0x0, b"mented")
    + client_frame(0x2, b"\x00\x01")
    + client_frame(0x8, struct.pack(">H", 1000) + b"bye")
)
write("connection", "session", HEADER + session)
write("connection", "close", HEADER + UPGRADE + client_frame(0x8, b""))
# Seeds named crash-* are inputs that once made this target fail; they are
# copied from fuzz/artifacts/, not written here.
write("connection", "silent", bytes([3, 6, 0, 0, 0xFF, 0, 7, 1, 0, 0, 6]) + UPGRADE + text("hi"))
