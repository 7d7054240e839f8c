"""The shared fixtures of the SDK suite: every test runs through both adapters.

``serve(handler)`` puts ``handler`` in front of a small app of the adapter's kind
(Starlette behind :class:`ASGIMiddleware` on uvicorn, Flask behind
:class:`WSGIMiddleware` on werkzeug) and returns its base URL. The app itself
answers ``app:<method> <path>`` on ``/``, ``/eventhandler`` and ``/other``, so a
request the handler does not claim is recognisable.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from flask import Flask
from flask import request as flask_request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.sdk.servers import serve_asgi, serve_wsgi
from webpubsub.sdk import ASGIMiddleware, WebPubSubEventHandler, WSGIMiddleware

Serve = Callable[[WebPubSubEventHandler], Awaitable[str]]
APP_PATHS = ("/", "/eventhandler", "/other")
APP_METHODS = ["GET", "POST", "DELETE", "PUT", "OPTIONS"]
UPLOAD_PATH = "/eventhandler/upload"


def starlette_app(handler: WebPubSubEventHandler) -> Starlette:
    async def echo(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"app:{request.method} {request.url.path}")

    async def upload(request: Request) -> PlainTextResponse:
        return PlainTextResponse(b"upload:" + await request.body())

    routes = [Route(p, echo, methods=APP_METHODS) for p in APP_PATHS]
    app = Starlette(routes=[*routes, Route(UPLOAD_PATH, upload, methods=["POST"])])
    app.add_middleware(ASGIMiddleware, handler=handler)
    return app


def flask_app(handler: WebPubSubEventHandler) -> Flask:
    app = Flask(__name__)

    def echo() -> str:
        return f"app:{flask_request.method} {flask_request.path}"

    def upload() -> bytes:
        return b"upload:" + flask_request.get_data()

    for i, path in enumerate(APP_PATHS):
        app.add_url_rule(path, f"echo{i}", echo, methods=APP_METHODS)
    app.add_url_rule(UPLOAD_PATH, "upload", upload, methods=["POST"])
    app.wsgi_app = WSGIMiddleware(app.wsgi_app, handler)  # type: ignore[method-assign]
    return app


@pytest.fixture(params=["asgi", "wsgi"])
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def serve(adapter: str) -> AsyncIterator[Serve]:
    async with contextlib.AsyncExitStack() as stack:

        async def start(handler: WebPubSubEventHandler) -> str:
            if adapter == "asgi":
                server = serve_asgi(starlette_app(handler))
            else:
                server = serve_wsgi(flask_app(handler))
            return await stack.enter_async_context(server)

        yield start


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s
