"""The servers of bench/scenarios.py other than the service itself: the upstream echo
handler (built on ``webpubsub.sdk``) and the python-socketio server of the comparison."""

from __future__ import annotations

import asyncio
import os
from multiprocessing.connection import Connection as Pipe
from typing import Any

from harness import ACCESS_KEY, HUB, raise_fd_limit

# -- the servers ------------------------------------------------------------------------------


HANDLER_SERVERS = ("uvicorn", "aiohttp")
"""How the echo handler is served: the SDK's ASGI middleware under uvicorn (httptools,
uvloop), or aiohttp's web server wired by hand to the SDK's core."""


def echo_handler(pipe: Pipe, server: str = "uvicorn") -> None:
    """The upstream event handler, built on ``webpubsub.sdk``, echoing each event: on
    127.0.0.1, HTTP/1.1 keep-alive, no access log; sends ``(pid, port)`` once listening."""
    import uvloop

    if server not in HANDLER_SERVERS:
        raise ValueError(f"handler server: one of {', '.join(HANDLER_SERVERS)}, not {server!r}")
    uvloop.run(_echo_uvicorn(pipe) if server == "uvicorn" else _echo_aiohttp(pipe))


def _echo_sdk_handler() -> Any:
    from webpubsub.sdk import UserEventRequest, UserEventResponse, WebPubSubEventHandler

    async def echo(request: UserEventRequest) -> UserEventResponse:
        return UserEventResponse(request.body, request.data_type)

    return WebPubSubEventHandler(HUB, keys=[ACCESS_KEY], on_event=echo)


async def _until_stopped(pipe: Pipe) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_reader(pipe.fileno(), stop.set)
    await stop.wait()


async def _echo_uvicorn(pipe: Pipe) -> None:
    """The SDK's ASGI middleware in front of a 404 app, as a user would deploy it."""
    import socket

    import uvicorn

    from webpubsub.sdk import ASGIMiddleware

    async def not_found(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = uvicorn.Config(
        ASGIMiddleware(not_found, _echo_sdk_handler()),
        loop="none",  # already on uvloop
        http="httptools",
        lifespan="off",
        ws="none",
        access_log=False,
        log_level="warning",
        proxy_headers=False,  # nothing forwards to it: no X-Forwarded-* to read
        timeout_keep_alive=75,  # aiohttp's keep-alive timeout: the service's pool stays warm
        timeout_graceful_shutdown=5,  # a request stuck half-sent does not hold the stop
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # bounded: serve() fails or starts within its startup
        if serving.done():
            await serving  # raises what stopped it
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    pipe.send((os.getpid(), sock.getsockname()[1]))
    await _until_stopped(pipe)
    server.should_exit = True
    await serving


async def _echo_aiohttp(pipe: Pipe) -> None:
    """aiohttp's web server on uvloop, wired by hand to the SDK's core."""
    from aiohttp import web

    from webpubsub.sdk import Headers

    handler = _echo_sdk_handler()

    async def handle(request: web.Request) -> web.StreamResponse:
        headers = Headers.from_raw(request.raw_headers)
        if not handler.matches(request.method, request.path, headers):
            return web.Response(status=404)

        async def read_body(limit: int) -> bytes | None:
            return await request.content.read(limit)

        response = await handler.process_stream(request.method, request.path, headers, read_body)
        if response is None:
            return web.Response(status=400)
        return web.Response(status=response.status, headers=response.headers, body=response.body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    pipe.send((os.getpid(), port))
    await _until_stopped(pipe)
    await runner.cleanup()


def sio_server(pipe: Pipe) -> None:
    """The python-socketio server of the benchmark: ``AsyncServer`` on aiohttp + uvloop."""
    raise_fd_limit()
    import uvloop

    uvloop.run(_sio_server(pipe))


async def _sio_server(pipe: Pipe) -> None:
    import socketio
    from aiohttp import web

    sio = socketio.AsyncServer(async_mode="aiohttp", transports=["websocket"])
    app = web.Application()
    sio.attach(app)
    rooms: dict[str, str] = {}

    @sio.event
    async def connect(sid: str, environ: Any, auth: Any = None) -> None:
        group = auth.get("group") if isinstance(auth, dict) else None
        if group:
            rooms[sid] = group
            await sio.enter_room(sid, group)

    @sio.event
    async def disconnect(sid: str, *reason: Any) -> None:
        rooms.pop(sid, None)

    @sio.on("pub")
    async def pub(sid: str, data: Any) -> None:
        room = rooms.get(sid)
        if room is not None:
            await sio.emit("m", data, to=room)

    async def emit(request: web.Request) -> web.Response:
        """The REST API of the scenarios: ``POST /emit[?to=ROOM]``, body = the message."""
        body = await request.text()
        await sio.emit("m", body, to=request.query.get("to"))
        return web.Response(status=202)

    app.router.add_post("/emit", emit)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    pipe.send((os.getpid(), runner.addresses[0][1]))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_reader(pipe.fileno(), stop.set)
    await stop.wait()
    await runner.cleanup()
