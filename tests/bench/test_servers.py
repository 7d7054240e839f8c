"""echo-upstream's event handler (bench/servers.py), on each ``--handler-server``: a real
process on 127.0.0.1, spoken to over one HTTP/1.1 keep-alive connection as the service does."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time

import pytest
from harness import ACCESS_KEY, HUB
from servers import HANDLER_SERVERS, echo_handler

from webpubsub.protocol.cloudevents import EventContext, user_event_request
from webpubsub.protocol.payload import DataType, Payload


def request_bytes(port: int, connection_id: str, body: bytes, key: str = ACCESS_KEY) -> bytes:
    ctx = EventContext(HUB, connection_id, None, None, "", "1", "127.0.0.1")
    url = f"http://127.0.0.1:{port}/eventhandler/message"
    payload = Payload(DataType.TEXT, body)
    event = user_event_request(ctx, url, [key], time.time(), "message", payload)
    head = [f"POST /eventhandler/message HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"]
    head += [f"{name}: {value}\r\n" for name, value in event.headers]
    head.append(f"Content-Length: {len(event.body)}\r\n\r\n")
    return "".join(head).encode() + event.body


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[bytes, dict[bytes, bytes], bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status, *lines = head[:-4].split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines)
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, headers, body


SERVER_HEADERS = {"uvicorn": b"uvicorn", "aiohttp": b"python/"}


@pytest.mark.parametrize("server", HANDLER_SERVERS)
async def test_the_echo_handler_answers_each_signed_event_with_its_body(server: str) -> None:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=echo_handler, args=(child, server), daemon=True)
    proc.start()
    try:
        assert await asyncio.to_thread(parent.poll, 60), "the handler did not start"
        _pid, port = parent.recv()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(2):  # the same connection both times: keep-alive
            body = f"hello {i} ✓".encode()
            status, headers, echoed = await exchange(
                reader, writer, request_bytes(port, f"conn{i}", body)
            )
            assert status == b"HTTP/1.1 200 OK"
            assert echoed == body
            assert headers[b"content-type"] == b"text/plain; charset=utf-8"
            # The server asked for is the one answering.
            assert headers[b"server"].startswith(SERVER_HEADERS[server])
        status, _, _ = await exchange(
            reader, writer, request_bytes(port, "conn9", b"x", key="another key")
        )
        assert status.startswith(b"HTTP/1.1 401")
        writer.close()
        await writer.wait_closed()
        parent.send(("stop",))
        await asyncio.to_thread(proc.join, 15)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.terminate()
            proc.join(5)


def test_an_unknown_handler_server_is_refused() -> None:
    _parent, child = mp.Pipe()
    with pytest.raises(ValueError, match="uvicorn"):
        echo_handler(child, "gunicorn")
