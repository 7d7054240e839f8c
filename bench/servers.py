"""The servers of bench/scenarios.py other than the service itself: the upstream echo
handler (built on ``webpubsub.sdk``) and the python-socketio server of the comparison."""

from __future__ import annotations

import asyncio
import os
from multiprocessing.connection import Connection as Pipe
from typing import Any

from harness import ACCESS_KEY, HUB, raise_fd_limit

# -- the servers ------------------------------------------------------------------------------


def echo_handler(pipe: Pipe) -> None:
    """The upstream event handler: aiohttp on uvloop, the SDK's core, echoing each event."""
    import uvloop

    uvloop.run(_echo_handler(pipe))


async def _echo_handler(pipe: Pipe) -> None:
    from aiohttp import web

    from webpubsub.sdk import Headers, UserEventRequest, UserEventResponse, WebPubSubEventHandler

    async def echo(request: UserEventRequest) -> UserEventResponse:
        return UserEventResponse(request.body, request.data_type)

    handler = WebPubSubEventHandler(HUB, keys=[ACCESS_KEY], on_event=echo)

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
    stop = asyncio.Event()
    asyncio.get_running_loop().add_reader(pipe.fileno(), stop.set)
    await stop.wait()
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
