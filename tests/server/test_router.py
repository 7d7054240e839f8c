"""The REST short cut through aiohttp's router: the same match as aiohttp's walk, taken
only when nothing else could match (server/router.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_urldispatcher import Domain, MatchedSubAppResource
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import make_config
from webpubsub.server.app import ServiceRunner
from webpubsub.server.router import ApiRouter


async def _handler(request: web.Request) -> web.StreamResponse:
    return web.Response()


def _routes(router: web.UrlDispatcher) -> web.AbstractRoute:
    """The service's routes (server/app.py and the portal's), the catch-all returned."""
    router.add_get("/api/health", _handler)
    catch_all = router.add_route("*", "/api/{tail:(?s:.*)}", _handler)
    router.add_route("GET", "/client/hubs/{hub}", _handler)
    router.add_route("GET", "/client/", _handler)
    router.add_route("GET", "/metrics", _handler)
    router.add_get("/portal", _handler, allow_head=False)
    router.add_get("/portal/static/{name}", _handler, allow_head=False)
    router.add_route("GET", "/portal/api/hubs/{hub}/connections", _handler)
    router.add_route("*", "/portal/api/{tail:.*}", _handler)
    return catch_all


def _ours(extra: Callable[[web.UrlDispatcher], object] = lambda router: None) -> ApiRouter:
    router = ApiRouter()
    router.catch_all = _routes(router)
    extra(router)
    router.freeze()
    return router


def _aiohttps(
    extra: Callable[[web.UrlDispatcher], object] = lambda router: None,
) -> web.UrlDispatcher:
    router = web.UrlDispatcher()
    _routes(router)
    extra(router)
    router.freeze()
    return router


def _resolved(router: web.UrlDispatcher, method: str, path: str) -> tuple[object, ...]:
    match = asyncio.run(router.resolve(make_mocked_request(method, path)))
    if match.http_exception is not None:
        return ("error", match.http_exception.status)
    route = match.route
    assert route.resource is not None
    return (route.method, route.resource.canonical, dict(match))


_SEGMENT = st.sampled_from(
    ["api", "hubs", "h", "users", ":send", "health", "", ".", "..", "%2F", "%25", "%2e"]
) | st.text(st.sampled_from("aZ9-_.~:@!$&'()*+,;=%2FA0é\n"), max_size=8)

OURS = _ours()
AIOHTTPS = _aiohttps()


@given(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    st.lists(_SEGMENT, max_size=7),
    st.sampled_from(["/api/hubs/", "/api/", "/", "/portal/", "/api/hubs"]),
    st.sampled_from(["", "?api-version=2024-12-01", "?a=%2F"]),
)
def test_the_short_cut_finds_what_aiohttps_walk_finds(
    method: str, segments: list[str], prefix: str, query: str
) -> None:
    path = prefix + "/".join(segments) + query
    try:
        request = make_mocked_request(method, path)
        request.rel_url.path_safe  # noqa: B018 (what both routers read)
    except ValueError:
        return  # not a request target aiohttp makes a request of
    assert _resolved(OURS, method, path) == _resolved(AIOHTTPS, method, path)


def test_a_send_takes_the_short_cut() -> None:
    assert OURS.short_cut is OURS.catch_all is not None
    path = "/api/hubs/chat/users/a%2Fb%25c/:send?api-version=2024-12-01"
    match = asyncio.run(OURS.resolve(make_mocked_request("POST", path)))
    assert match.route is OURS.catch_all
    assert dict(match) == {"tail": "hubs/chat/users/a/b%c/:send"}


@pytest.mark.parametrize(
    "extra",
    [
        lambda router: router.add_get("/api/hubs/chat", _handler),
        lambda router: router.add_get("/api/hubs/{hub}/x", _handler),
        lambda router: router.add_get("/api{x}", _handler),
        lambda router: router.add_static("/api/hubs/static", "."),
        lambda router: router.register_resource(
            MatchedSubAppResource(Domain("example.com"), web.Application())
        ),
        lambda router: router.add_route("GET", "/api/{tail:(?s:.*)}", _handler),
    ],
    ids=["plain", "dynamic", "prefix-pattern", "static", "domain", "second-catch-all"],
)
def test_no_short_cut_when_another_resource_could_match(
    extra: Callable[[web.UrlDispatcher], object],
) -> None:
    assert _ours(extra).short_cut is None


def test_no_short_cut_for_another_catch_all() -> None:
    router = ApiRouter()
    router.catch_all = router.add_route("*", "/api/{tail}", _handler)  # no "/" in the tail
    router.freeze()
    assert router.short_cut is None


def test_plain_paths_under_api_outside_hubs_leave_the_short_cut() -> None:
    router = _ours(lambda router: router.add_get("/api/hubsx", _handler))
    assert router.short_cut is router.catch_all


async def test_the_service_takes_the_short_cut() -> None:
    service = ServiceRunner(make_config())
    await service.start()
    try:
        assert service._runner is not None
        router = service._runner.app.router
        assert isinstance(router, ApiRouter)
        assert router.short_cut is not None and router.short_cut is router.catch_all
    finally:
        await service.stop()
