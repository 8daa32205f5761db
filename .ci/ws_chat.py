"""Sends each stdin line as a WebSocket text message and prints each reply.

Usage: python3 .ci/ws_chat.py ws://HOST:PORT/Endpoint < lines
A line-at-a-time client built on the `websockets` package from PyPI: what
`websocat` does, for machines without it.
"""
import sys

from websockets.sync.client import connect

with connect(sys.argv[1]) as ws:
    for line in sys.stdin:
        ws.send(line.rstrip("\n"))
        print(ws.recv(), flush=True)
