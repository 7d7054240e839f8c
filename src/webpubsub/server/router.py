"""aiohttp's router, with a short cut for a hub's REST operations.

aiohttp resolves a request by walking its path from the longest prefix down, looking
each up in its index of resources: for ``/api/hubs/{hub}/users/{user}/:send`` six
looks and the catch-all's regular expression, about a thirtieth of a REST send's CPU
(issue 13). Every path under ``/api/hubs/`` ends at the REST catch-all, which routes on
the raw path itself (:func:`webpubsub.server.rest.route`), so :class:`ApiRouter` hands
such a request to it at once, when no other resource could take it (checked once, when
the application starts): the same match aiohttp's walk finds, without the walk.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.web_urldispatcher import MatchedSubAppResource

SHORT_CUT = "/api/hubs/"
"""The decoded paths (``path_safe``) the catch-all takes without aiohttp's walk."""
CATCH_ALL_PATTERN = "/api/(?P<tail>(?s:.*))"
"""The catch-all's pattern as aiohttp compiles ``/api/{tail:(?s:.*)}``: every path under
``/api/`` (``(?s)``: a decoded path may hold a line break)."""


class ApiRouter(web.UrlDispatcher):
    """A :class:`web.UrlDispatcher` that sends a path under :data:`SHORT_CUT` to
    :attr:`catch_all` directly, once frozen, if nothing else could match such a path."""

    def __init__(self) -> None:
        super().__init__()
        self.catch_all: web.AbstractRoute | None = None
        """The REST catch-all, ``*`` on ``/api/{tail:(?s:.*)}`` (set by the composition root)."""
        self.short_cut: web.AbstractRoute | None = None
        """:attr:`catch_all` once frozen, when the short cut finds what the walk would."""

    def freeze(self) -> None:
        super().freeze()
        self.short_cut = self.catch_all if self._short_cut_is_exact() else None

    def _short_cut_is_exact(self) -> bool:
        """Whether aiohttp's walk ends at :attr:`catch_all` for every path under
        :data:`SHORT_CUT`, with every method: no resource matched by domain (those come
        first), the catch-all's only route is ``*`` and its pattern takes every path under
        ``/api/``, and any other resource under ``/api`` is a plain path (matched exactly)
        outside :data:`SHORT_CUT` (the walk tries longer prefixes first, ``/api`` last)."""
        route = self.catch_all
        if route is None:
            return False
        resource = route.resource
        if (
            route.method != "*"
            or not isinstance(resource, web.DynamicResource)
            or len(resource) != 1
            or resource.get_info()["pattern"].pattern != CATCH_ALL_PATTERN
        ):
            return False
        for other in self.resources():
            if other is resource:
                continue
            if isinstance(other, MatchedSubAppResource):
                return False
            if other.canonical.startswith("/api") and not (
                isinstance(other, web.PlainResource) and not other.canonical.startswith(SHORT_CUT)
            ):
                return False
        return True

    async def resolve(self, request: web.Request) -> web.UrlMappingMatchInfo:
        route = self.short_cut
        if route is not None:
            path = request.rel_url.path_safe
            if path.startswith(SHORT_CUT):
                tail = path[5:]  # what the catch-all's pattern takes: all after "/api/"
                if "%" in tail:  # decoded as aiohttp decodes a match (%2F and %25 stay)
                    tail = tail.replace("%2F", "/").replace("%25", "%")
                return web.UrlMappingMatchInfo({"tail": tail}, route)
        return await super().resolve(request)
