"""The framework-free HTTP exchange the event handler works on.

Adapters (ASGI, WSGI, or a few lines in any other framework) turn their request
into an :class:`HttpRequest` and write the :class:`HttpResponse` back; nothing
in the core ever sees a framework object.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar, overload

_T = TypeVar("_T")


class Headers(Mapping[str, str]):
    """Immutable HTTP headers with case-insensitive names.

    ``headers["ce-userId"]`` is the first value of that header; :meth:`get_all`
    returns every value of a repeated header, in order. Iterating yields each
    name once, lower-cased.
    """

    __slots__ = ("_first", "_items")

    def __init__(self, items: Iterable[tuple[str, str]] | Mapping[str, str] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._set([(str(k), str(v)) for k, v in pairs])

    def _set(self, items: list[tuple[str, str]]) -> None:
        first: dict[str, str] = {}
        keep = first.setdefault  # the first of a repeated header wins
        for name, value in items:
            keep(name.lower(), value)
        self._items = tuple(items)
        self._first = first

    def __getitem__(self, name: str) -> str:
        return self._first[name.lower()]

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str | _T) -> str | _T: ...
    def get(self, name: str, default: object = None) -> object:
        """Mapping.get, without its try/except around ``__getitem__``."""
        return self._first.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first

    def __iter__(self) -> Iterator[str]:
        return iter(self._first)

    def __len__(self) -> int:
        return len(self._first)

    @classmethod
    def from_raw(cls, items: Iterable[tuple[bytes, bytes]]) -> Headers:
        """Headers from the bytes on the wire.

        Values are UTF-8 when they decode as such (the service, like most HTTP
        clients, writes a non-ASCII user id as UTF-8), ISO-8859-1 otherwise.
        """
        made = cls.__new__(cls)
        raw = items if isinstance(items, list | tuple) else list(items)  # read twice below
        try:  # one decode per header while every value is UTF-8 (the per-event path)
            pairs = [(k.decode("latin-1"), v.decode("utf-8")) for k, v in raw]
        except UnicodeDecodeError:
            pairs = [(k.decode("latin-1"), _text(v)) for k, v in raw]
        first = {k.lower(): v for k, v in pairs}
        if len(first) == len(pairs):  # no repeated header: nothing to keep the first of
            made._items, made._first = tuple(pairs), first
        else:
            made._set(pairs)
        return made

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name``, in the order received."""
        lowered = name.lower()
        return [v for k, v in self._items if k.lower() == lowered]

    def items_all(self) -> tuple[tuple[str, str], ...]:
        """Every ``(name, value)`` pair as received, repetitions included."""
        return self._items

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request to the app: ``path`` is the URL path without the query."""

    method: str
    path: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """The handler's answer; ``headers`` keep their order (no ``Content-Length``)."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)
