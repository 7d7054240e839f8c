"""Shared fixtures: the real service on port 0, and a real event-handler app; the
Hypothesis profile (``tests/support/fuzz.py``)."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

import pytest
import uvloop

from tests.support import fuzz  # noqa: F401  (loads the Hypothesis profile first)
from tests.support.handler import EventHandlerApp
from tests.support.redis_server import RedisServer
from webpubsub import devcert
from webpubsub.backplane.base import Backplane
from webpubsub.config import ServiceConfig, default_config
from webpubsub.core.settings import HubSettings
from webpubsub.server.app import ServiceRunner

ACCESS_KEY = "test-access-key-0123456789-abcdefghijklmnop"
SECOND_KEY = "second-access-key-0123456789-abcdefghijklm"


def make_config(
    *hubs: HubSettings, keys: Sequence[str] = (ACCESS_KEY,), **server: object
) -> ServiceConfig:
    config = default_config().with_overrides(host="127.0.0.1", port=0, access_keys=tuple(keys))
    server.setdefault("data_dir", ":memory:")  # the event queue: nothing on disk
    server.setdefault("shutdown_timeout_seconds", 1.0)  # a handler that never answers
    if server:
        config = dataclasses.replace(
            config,
            server=dataclasses.replace(config.server, **server),  # type: ignore[arg-type]
        )
    return dataclasses.replace(config, hubs={h.name.lower(): h for h in hubs})


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests run on uvloop, as ``webpubsub serve`` does."""
    return {"uvloop": uvloop.new_event_loop}


StartService = Callable[..., Awaitable[ServiceRunner]]


@pytest.fixture
async def start_service() -> AsyncIterator[StartService]:
    """Start a service: ``await start_service(*hub_settings, keys=..., backplane=...)``."""
    runners: list[ServiceRunner] = []

    async def start(
        *hubs: HubSettings,
        keys: Sequence[str] = (ACCESS_KEY,),
        backplane: Backplane | None = None,
        config: ServiceConfig | None = None,
        **server: object,
    ) -> ServiceRunner:
        cfg = config or make_config(*hubs, keys=keys, **server)
        runner = ServiceRunner(cfg, backplane=backplane, advertised_host="127.0.0.1")
        await runner.start()
        runners.append(runner)
        return runner

    yield start
    for runner in reversed(runners):
        await runner.stop()


@pytest.fixture(autouse=True, scope="session")
def _private_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Services started without a ``data_dir`` (``webpubsub serve`` in a subprocess) keep
    their event queue in a directory of this run, not the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))
    yield
    mp.undo()


@pytest.fixture
async def service(start_service: StartService) -> ServiceRunner:
    """A service with default settings (no event handlers, tokens required)."""
    return await start_service()


@pytest.fixture
async def handler_app() -> AsyncIterator[EventHandlerApp]:
    app = EventHandlerApp()
    await app.start()
    yield app
    await app.stop()


@pytest.fixture(scope="session")
def dev_cert(tmp_path_factory: pytest.TempPathFactory) -> devcert.DevCert:
    """A development CA and its localhost certificate, made once per test process."""
    dev, _ = devcert.ensure(tmp_path_factory.mktemp("dev-cert"))
    return dev


def tls_files(dev: devcert.DevCert) -> dict[str, object]:
    """``start_service`` settings that serve https:// and wss:// with ``dev``'s certificate."""
    return {"tls_cert": str(dev.cert), "tls_key": str(dev.key)}


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real ``redis-server`` per test process, on a free port; tests keep apart by
    key prefix (``redis_prefix``), so none needs to flush it."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def secure_redis(
    tmp_path_factory: pytest.TempPathFactory, dev_cert: devcert.DevCert
) -> Iterator[RedisServer]:
    """A ``redis-server`` that serves TLS only (``rediss://``, the development CA) and asks
    for a password, as a managed Redis does."""
    server = RedisServer(
        tmp_path_factory.mktemp("secure-redis"), tls=dev_cert, password="s3cret/pa ss"
    ).start()
    yield server
    server.stop()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own on the shared Redis."""
    return f"test-{secrets.token_hex(6)}"
