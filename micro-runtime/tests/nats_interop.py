#!/usr/bin/env python3
"""A foreign NATS client (nats-py) talking to micro's NatsBroker.

Driven by micro-runtime/tests/brokers.rs:

  nats_interop.py receive <server> <subject>
      subscribes, prints READY, then prints the first message received as one
      JSON line: {"subject": ..., "headers": {...}, "body": <the JSON payload>}
  nats_interop.py publish <server> <subject> <json>
      publishes <json> with the header `Content-Type: application/json`,
      then prints SENT
"""

import asyncio
import json
import sys

try:
    import nats
except ImportError:
    sys.exit("the Python NATS client is missing: pip install nats-py")


async def connect(server):
    return await nats.connect(
        server, connect_timeout=3, allow_reconnect=False, max_reconnect_attempts=0
    )


async def receive(server, subject):
    nc = await connect(server)
    sub = await nc.subscribe(subject)
    await nc.flush()
    print("READY", flush=True)
    msg = await sub.next_msg(timeout=10)
    print(
        json.dumps(
            {
                "subject": msg.subject,
                "headers": dict(msg.headers or {}),
                "body": json.loads(msg.data),
            }
        ),
        flush=True,
    )
    await nc.close()


async def publish(server, subject, body):
    nc = await connect(server)
    await nc.publish(
        subject, body.encode(), headers={"Content-Type": "application/json"}
    )
    await nc.flush()
    print("SENT", flush=True)
    await nc.close()


def main(argv):
    if len(argv) == 4 and argv[1] == "receive":
        asyncio.run(receive(argv[2], argv[3]))
    elif len(argv) == 5 and argv[1] == "publish":
        asyncio.run(publish(argv[2], argv[3], argv[4]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
