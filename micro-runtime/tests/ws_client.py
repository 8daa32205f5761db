"""A WebSocket peer for tests/http.rs, built on the `websockets` package from PyPI.

Usage: python3 ws_client.py URL MODE MESSAGES [HEADER=VALUE ...]

MESSAGES is a JSON array; each string is sent as a text message, each
{"binary": "..."} as a binary one. Modes:

- echo:  send each message and read one reply after each, then close (1000).
- drain: send every message, then read until the server closes.
- vanish: like echo, but leave without a close frame (the process exits).
- stall: send every message, print "sent", then read nothing (for at
         most a minute: the test kills the process).
- flood: MESSAGES is [count, size]: send `count` text messages of `size`
         bytes from a thread without reading, until sending stalls (the
         server stopped reading); report how many went out, then exit
         without closing.

Prints one JSON object: {"received": [...], "close_code": N, "close_reason": S}
(flood: {"sent": N}).
"""
import json
import os
import sys
import threading
import time

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

TIMEOUT = 10


def send(ws, message):
    if isinstance(message, dict):
        ws.send(message["binary"].encode())
    else:
        ws.send(message)


def closed(out, e):
    frame = e.rcvd
    out["close_code"] = frame.code if frame else None
    out["close_reason"] = frame.reason if frame else None


def flood(ws, count, size):
    sent = [0]
    item = json.dumps("x" * (size - 2))

    def pump():
        try:
            for _ in range(count):
                ws.send(item)
                sent[0] += 1
        except Exception:
            pass

    threading.Thread(target=pump, daemon=True).start()
    # Wait until the count stops moving (or everything went out).
    last, deadline = -1, time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.3)
        if sent[0] == last or sent[0] == count:
            break
        last = sent[0]
    print(json.dumps({"sent": sent[0]}), flush=True)
    # Leave without a close frame: the server sees the connection drop.
    os._exit(0)


def main():
    url, mode, messages = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    headers = dict(h.split("=", 1) for h in sys.argv[4:])
    out = {"received": [], "close_code": None, "close_reason": None}
    with connect(
        url, additional_headers=headers, open_timeout=TIMEOUT, close_timeout=TIMEOUT
    ) as ws:
        if mode == "flood":
            flood(ws, *messages)
        elif mode == "stall":
            for message in messages:
                send(ws, message)
            print("sent", flush=True)
            time.sleep(60)
            os._exit(0)
        elif mode in ("echo", "vanish"):
            for message in messages:
                send(ws, message)
                out["received"].append(ws.recv(timeout=TIMEOUT))
            if mode == "vanish":
                print(json.dumps(out), flush=True)
                os._exit(0)
            ws.close()
            out["close_code"] = ws.close_code
            out["close_reason"] = ws.close_reason
        elif mode == "drain":
            try:
                for message in messages:
                    send(ws, message)
            except ConnectionClosed:
                pass  # The server closed early; what it sent is still read below.
            try:
                while True:
                    out["received"].append(ws.recv(timeout=TIMEOUT))
            except ConnectionClosed as e:
                closed(out, e)
        else:
            sys.exit(f"unknown mode {mode}")
    print(json.dumps(out), flush=True)


main()
