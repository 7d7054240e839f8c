"""The collaborative cursors example (``examples/cursors``) served for a test: its app on
uvicorn, wired to a real service whose hub is the example's ``webpubsub.toml`` (pointed
at the app's port), with ``tests/js/node_modules`` as the browser client's packages."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.conftest import StartService
from tests.examples.test_chat_examples import EXAMPLES
from tests.sdk.servers import serve_asgi
from webpubsub.config import load_config
from webpubsub.core.settings import HubSettings
from webpubsub.server.app import ServiceRunner

NODE_MODULES = Path(__file__).resolve().parents[1] / "js" / "node_modules"
HUB = "cursors"


def cursors_module() -> ModuleType:
    """``examples/cursors/app.py``, loaded once (its dataclasses need it in
    ``sys.modules``)."""
    name = "example_cursors"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / "cursors" / "app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def example_hub(app_port: int) -> HubSettings:
    """The hub of ``examples/cursors/webpubsub.toml``, its handler on ``app_port``."""
    hub = load_config(EXAMPLES / "cursors" / "webpubsub.toml").hubs[HUB]
    (handler,) = hub.event_handlers
    url = handler.url_template.replace("localhost:5000", f"127.0.0.1:{app_port}")
    assert url != handler.url_template, "the example's handler is not on localhost:5000"
    handler = dataclasses.replace(handler, url_template=url, timeout_seconds=10.0)
    return dataclasses.replace(hub, event_handlers=(handler,))


@dataclasses.dataclass(frozen=True)
class Cursors:
    url: str  # the app's
    service: ServiceRunner
    app: Any  # the Starlette app: app.state.room is its Room

    @property
    def room(self) -> Any:
        return self.app.state.room


@contextlib.asynccontextmanager
async def serve_cursors(start_service: StartService, **options: Any) -> AsyncIterator[Cursors]:
    """The example app (``create_app(..., **options)``) and its service."""
    # The app needs the service's connection string and the service the app's URL:
    # bind the app's socket first.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        runner = await start_service(example_hub(sock.getsockname()[1]))
        app = cursors_module().create_app(runner.connection_string, NODE_MODULES, **options)
        async with serve_asgi(app, sock) as url:
            yield Cursors(url, runner, app)
