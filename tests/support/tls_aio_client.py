"""The official aio client (``azure.messaging.webpubsubclient.aio``) in a process of its own,
as a user runs it with ``SSL_CERT_FILE`` exported: used by tests/server/test_tls.py.

    python tls_aio_client.py <client access URL>

Prints one JSON object per line: ``connected``, then ``message`` {data} for the first
server message, then exits 0; or ``refused`` {error} when the connection fails.
"""

from __future__ import annotations

import asyncio
import json
import sys

from azure.messaging.webpubsubclient.aio import WebPubSubClient, WebPubSubClientCredential
from azure.messaging.webpubsubclient.models import CallbackType, OnServerDataMessageArgs

DEADLINE = 20.0


def emit(kind: str, **fields: object) -> None:
    print(json.dumps({"kind": kind, **fields}), flush=True)


async def main(url: str) -> None:
    async def provide() -> str:
        return url

    received: asyncio.Queue[object] = asyncio.Queue()

    async def on_message(args: OnServerDataMessageArgs) -> None:
        await received.put(args.data)

    client = WebPubSubClient(credential=WebPubSubClientCredential(provide), reconnect_retry_total=0)
    await client.subscribe(CallbackType.SERVER_MESSAGE, on_message)
    try:
        await client.open()
    except Exception as exc:  # what the SDK raises is its own; report its text
        cause = exc.__cause__ or exc.__context__
        emit("refused", error=f"{exc} {cause or ''}")
        return
    try:
        emit("connected")
        emit("message", data=await received.get())
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(sys.argv[1]), DEADLINE))
