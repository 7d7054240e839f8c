"""Real HTTP servers for apps under test: uvicorn (ASGI) and werkzeug (WSGI).

Both listen on 127.0.0.1; the URL is known once the context is entered. Also a
thread-safe recorder for what handlers see (WSGI and sync handlers run in threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar

import uvicorn
from werkzeug.serving import make_server

T = TypeVar("T")
WAIT_SECONDS = 10.0


@contextlib.asynccontextmanager
async def serve_asgi(app: Any, sock: socket.socket | None = None) -> AsyncIterator[str]:
    """Run ``app`` on uvicorn in this event loop, on ``sock`` or a free port."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    config.load()
    server = uvicorn.Server(config)
    # What Server.serve() does, minus signal handlers: we are not the main program.
    server.lifespan = config.lifespan_class(config)
    sockets = [sock] if sock is not None else None
    await server.startup(sockets=sockets)
    port = server.servers[0].sockets[0].getsockname()[1]
    main_loop = asyncio.create_task(server.main_loop())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await main_loop
        await server.shutdown(sockets=sockets)


class LateWSGIApp:
    """A WSGI app whose target is set after the server is listening."""

    def __init__(self) -> None:
        self.target: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.target(environ, start_response)


@contextlib.asynccontextmanager
async def serve_wsgi(app: Any) -> AsyncIterator[str]:
    """Run ``app`` on werkzeug's threaded server in a background thread."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        await asyncio.to_thread(server.shutdown)
        await asyncio.to_thread(thread.join, WAIT_SECONDS)
        server.server_close()


class Recorder(Generic[T]):
    """Collects items from any thread; ``await next()`` waits (bounded) for the next one."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[T] = asyncio.Queue()
        self.items: list[T] = []

    def __call__(self, item: T) -> None:
        self._loop.call_soon_threadsafe(self._put, item)

    def _put(self, item: T) -> None:
        self.items.append(item)
        self._queue.put_nowait(item)

    async def next(self, timeout: float = WAIT_SECONDS) -> T:
        return await asyncio.wait_for(self._queue.get(), timeout)
