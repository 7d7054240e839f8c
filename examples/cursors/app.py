"""Collaborative cursors: a browser page that calls ``invoke`` and streams to a group.

Run it (the service must be running, with the hub ``cursors`` wired to
``http://localhost:5000/eventhandler``: ``webpubsub serve --config
examples/cursors/webpubsub.toml``, see README.md)::

    (cd examples/cursors && npm install @azure/web-pubsub-client@1.1.0)
    python examples/cursors/app.py "<connection string>"

``GET /`` is the page, ``GET /negotiate?name=<who>`` gives a client access URL whose
token may join the group ``room`` and send to it, ``/vendor/...`` serves the official
``@azure/web-pubsub-client`` browser build (and its dependencies) from a
``node_modules`` directory, and the SDK's ASGI middleware answers the service's
webhooks at ``/eventhandler``: the invocation ``hello`` (the caller's name and colour,
and who else is here) and ``disconnected`` (who left).

The cursors themselves never reach this app: each page streams its pointer to the group
(``openGroupStream``), and the service fans the stream out to the other pages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from azure.messaging.webpubsubservice.aio import WebPubSubServiceClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from webpubsub.sdk import (
    ASGIMiddleware,
    DisconnectedRequest,
    EventHandlerError,
    UserEventRequest,
    WebPubSubEventHandler,
)

log = logging.getLogger("cursors")

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
HUB = "cursors"
GROUP = "room"
ROLES = [f"webpubsub.joinLeaveGroup.{GROUP}", f"webpubsub.sendToGroup.{GROUP}"]
"""What a page's token may do: join the room and send (and stream) to it; nothing else."""

NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
DEFAULT_MAX_MEMBERS = 50
DEFAULT_IDLE_TIMEOUT_MS = 5_000
PALETTE = (
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#9a6324",
    "#469990",
    "#800000",
    "#808000",
    "#000075",
)

BROWSER_MODULES: Mapping[str, tuple[str, str]] = {
    # import specifier: (package, subpath of its package.json "exports")
    "@azure/web-pubsub-client": ("@azure/web-pubsub-client", "."),
    "@azure/core-util": ("@azure/core-util", "."),
    "@azure/logger": ("@azure/logger", "."),
    "@azure/abort-controller": ("@azure/abort-controller", "."),
    "@typespec/ts-http-runtime/internal/util": ("@typespec/ts-http-runtime", "./internal/util"),
    "@typespec/ts-http-runtime/internal/logger": ("@typespec/ts-http-runtime", "./internal/logger"),
}
"""Every bare import of the client's browser build and of its dependencies' (``events``,
which is CommonJS, is ``static/events.js``, a module of ours)."""

SCRIPTS = ("cursors.js", "events.js")
JAVASCRIPT = "text/javascript; charset=utf-8"


@dataclass(frozen=True)
class Member:
    name: str
    colour: str

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "colour": self.colour}


class RoomFull(Exception):
    pass


class Room:
    """Who said ``hello`` and has not left, by connection id: at most ``max_members``."""

    def __init__(self, max_members: int = DEFAULT_MAX_MEMBERS) -> None:
        if max_members < 1:
            raise ValueError("max_members must be at least 1")
        self.max_members = max_members
        self.members: dict[str, Member] = {}
        self._changed = asyncio.Event()

    def hello(self, connection_id: str, name: str) -> tuple[Member, list[Member]]:
        """The caller's entry (made on its first hello) and everyone else's."""
        me = self.members.get(connection_id)
        if me is None:
            if len(self.members) >= self.max_members:
                raise RoomFull(f"the room is full ({self.max_members} people)")
            me = Member(name, self._free_colour())
            self.members[connection_id] = me
            self._change()
        others = [m for cid, m in self.members.items() if cid != connection_id]
        return me, others

    def leave(self, connection_id: str) -> Member | None:
        gone = self.members.pop(connection_id, None)
        if gone is not None:
            self._change()
        return gone

    async def wait_until(self, predicate: Callable[[Room], bool]) -> None:
        """Until ``predicate(room)`` holds (bound it with ``asyncio.timeout``)."""
        while not predicate(self):
            await self._changed.wait()

    def _change(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _free_colour(self) -> str:
        used = {m.colour for m in self.members.values()}
        free = [c for c in PALETTE if c not in used]
        return free[0] if free else PALETTE[len(self.members) % len(PALETTE)]


def browser_import_map(node_modules: Path) -> dict[str, dict[str, str]]:
    """The page's import map: each module of :data:`BROWSER_MODULES` at its package's
    ``browser`` build under ``/vendor/``. Raises ``FileNotFoundError`` naming what is
    missing (run ``npm install @azure/web-pubsub-client@1.1.0``)."""
    imports = {"events": "/static/events.js"}
    for specifier, (package, subpath) in BROWSER_MODULES.items():
        manifest = node_modules / package / "package.json"
        if not manifest.is_file():
            raise FileNotFoundError(
                f"{manifest} is missing: install @azure/web-pubsub-client@1.1.0 "
                f"(npm install) so that {node_modules} has {package}"
            )
        target = _browser_entry(json.loads(manifest.read_text("utf-8")), subpath)
        if target is None or not (node_modules / package / target).is_file():
            raise FileNotFoundError(f"{package}: no browser build for {subpath!r} in {manifest}")
        imports[specifier] = f"/vendor/{package}/{PurePosixPath(target)}"
    return {"imports": imports}


def _browser_entry(manifest: Mapping[str, object], subpath: str) -> str | None:
    """Where ``exports[subpath]`` points for a browser (``browser``, else ``import``,
    else ``default`` condition)."""
    exports = manifest.get("exports")
    entry = exports.get(subpath) if isinstance(exports, dict) else None
    for _ in range(4):  # conditions nest: {"browser": {"types": ..., "default": ...}}
        if isinstance(entry, str):
            return entry
        if not isinstance(entry, dict):
            return None
        entry = next((entry[c] for c in ("browser", "import", "default") if c in entry), None)
    return None


def vendor_file(node_modules: Path, path: str) -> Path | None:
    """The file ``/vendor/<path>`` serves: a ``.js``/``.mjs`` file inside one of the
    packages of :data:`BROWSER_MODULES`, else None."""
    parts = PurePosixPath(path).parts
    if not parts or any(p in ("", ".", "..") or "\\" in p for p in parts):
        return None
    package = "/".join(parts[:2] if parts[0].startswith("@") else parts[:1])
    if package not in {p for p, _ in BROWSER_MODULES.values()}:
        return None
    if PurePosixPath(path).suffix not in (".js", ".mjs"):
        return None
    file = node_modules.joinpath(*parts)
    return file if file.is_file() else None


def create_app(
    connection_string: str,
    node_modules: Path | str,
    *,
    hub: str = HUB,
    max_members: int = DEFAULT_MAX_MEMBERS,
    idle_timeout_ms: int = DEFAULT_IDLE_TIMEOUT_MS,
) -> Starlette:
    """The app; ``app.state.room`` is the :class:`Room`."""
    node_modules = Path(node_modules)
    import_map = json.dumps(browser_import_map(node_modules), indent=2).replace("</", "<\\/")
    page = (STATIC / "index.html").read_text("utf-8").replace("{{IMPORT_MAP}}", import_map)
    service = WebPubSubServiceClient.from_connection_string(connection_string, hub=hub)
    room = Room(max_members)

    # The event handler: verifies the service's signature with the connection string's key.
    handler = WebPubSubEventHandler.from_connection_string(connection_string, hub)

    # async: they run on the event loop, one at a time (a plain def would run in a thread).
    @handler.on_event
    async def event(request: UserEventRequest) -> dict[str, object]:
        # An invokeEvent("hello") from the page; what this returns is its result.
        if request.context.event_name != "hello":
            raise EventHandlerError(400, f"unknown event {request.context.event_name!r}")
        name = request.context.user_id or "anonymous"
        try:
            me, others = room.hello(request.context.connection_id, name)
        except RoomFull as exc:
            raise EventHandlerError(503, str(exc)) from None
        log.info("%s is here (%d in the room)", name, len(room.members))
        return {
            **me.as_json(),
            "here": [m.as_json() for m in others],
            "idleTimeoutMs": idle_timeout_ms,
        }

    @handler.on_disconnected
    async def disconnected(request: DisconnectedRequest) -> None:
        gone = room.leave(request.context.connection_id)
        if gone is not None:
            log.info("%s left (%d in the room)", gone.name, len(room.members))

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page)

    async def negotiate(request: Request) -> Response:
        names = request.query_params.getlist("name")
        if len(names) != 1 or not NAME.fullmatch(names[0]):
            return JSONResponse({"error": "name: 1 to 32 letters, digits or _.-"}, status_code=400)
        token = await service.get_client_access_token(user_id=names[0], roles=ROLES)
        return JSONResponse({"url": token["url"]})

    async def script(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in SCRIPTS:
            return Response("not found", status_code=404, media_type="text/plain")
        return FileResponse(STATIC / name, media_type=JAVASCRIPT)

    async def vendor(request: Request) -> Response:
        file = vendor_file(node_modules, request.path_params["path"])
        if file is None:
            return Response("not found", status_code=404, media_type="text/plain")
        return FileResponse(file, media_type=JAVASCRIPT)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await service.close()

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/index.html", index),
            Route("/negotiate", negotiate),
            Route("/static/{name}", script),
            Route("/vendor/{path:path}", vendor),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(ASGIMiddleware, handler=handler)
    app.state.room = room
    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="The collaborative cursors example.")
    parser.add_argument(
        "connection_string",
        nargs="?",
        default=os.environ.get("WebPubSubConnectionString", ""),  # noqa: SIM112 (Azure's name)
        help="the service's connection string (default: $WebPubSubConnectionString)",
    )
    parser.add_argument(
        "--node-modules",
        default=os.environ.get("CURSORS_NODE_MODULES", str(HERE / "node_modules")),
        help="where @azure/web-pubsub-client@1.1.0 is installed "
        "(default: $CURSORS_NODE_MODULES, else examples/cursors/node_modules)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument(
        "--idle-timeout-ms",
        type=int,
        default=DEFAULT_IDLE_TIMEOUT_MS,
        help="how long a resting pointer's stream stays open (default: %(default)s)",
    )
    args = parser.parse_args()
    if not args.connection_string:
        parser.error("no connection string (argument or $WebPubSubConnectionString)")
    logging.basicConfig(level=logging.INFO)
    try:
        app = create_app(
            args.connection_string, args.node_modules, idle_timeout_ms=args.idle_timeout_ms
        )
    except FileNotFoundError as exc:
        parser.exit(1, f"{exc}\n")
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
