"""HTTP/1.1 requests to event handlers and their answers (RFC 9112), sans-I/O.

What the webhook client needs and no more: :func:`encode_request` builds a request's
bytes; :class:`ResponseParser` reads one response from the bytes a connection
receives — ``Content-Length``, ``chunked`` or read-until-close bodies, interim 1xx
answers skipped — and says whether the connection may carry another request.
Everything is bounded (one header line, the header block, the header count, the
body); a response that breaks the rules raises :class:`HttpResponseError`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

MAX_HEADER_COUNT = 256
MAX_CHUNK_LINE = 1024
"""A chunk-size line (hex size and extensions) longer than this is refused."""

_CRLF = b"\r\n"
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_TEXT = _TOKEN.decode("ascii")
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([^\r\n\0]*)\r\n")
"""One header line, in bytes (only to measure the lines of a block as long as a line)."""
_FIELD_TEXT = re.compile("(" + _TOKEN_TEXT + "):[ \t]*([^\r\n\0]*)\r\n")
"""One header line of a decoded block: its name and its value (blanks after it kept)."""
_FIELDS_TEXT = re.compile("(?:" + _TOKEN_TEXT + ":[^\r\n\0]*\r\n)*")
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
_NO_BODY = frozenset({204, 304})


class HttpResponseError(ValueError):
    """The bytes received are not an acceptable HTTP/1.x response."""


class ResponseTooLarge(HttpResponseError):
    """The body is longer than the limit (``status``: the response's)."""

    def __init__(self, status: int) -> None:
        super().__init__("response too large")
        self.status = status


class InvalidRequest(ValueError):
    """A header name or value that would break the request's framing (CR, LF, NUL)."""


@dataclass(slots=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    reusable: bool
    """The connection may carry another request: HTTP/1.1 (or 1.0 with
    ``keep-alive``), no ``Connection: close``, the body framed, nothing after it."""
    keep_alive_timeout: int | None = None
    """The ``timeout=`` of a ``Keep-Alive`` header, in seconds: how long the server
    keeps the connection idle (None when it did not say)."""


def encode_request(
    method: str,
    target: str,
    host: str,
    headers: tuple[tuple[str, str], ...] | list[tuple[str, str]],
    body: bytes,
) -> bytes:
    """The request's bytes: ``target`` is the path and query, ``host`` the ``Host``
    header. ``Content-Length`` is sent for a body, and for every POST.

    Raises :class:`InvalidRequest` for a header that contains CR, LF or NUL (or a name
    with a colon or space), which would smuggle another header or request."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    for name, value in headers:
        lines.append(f"{name}: {value}\r\n")
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}\r\n")
    head = "".join(lines)
    # One check over the whole block: every CR and LF is a line end we wrote.
    count = len(headers) + 2 + (1 if body or method == "POST" else 0)
    if head.count("\n") != count or head.count("\r") != count or "\0" in head:
        raise InvalidRequest("a header name or value contains CR, LF or NUL")
    for name, _ in headers:
        if not name or ":" in name or " " in name or "\t" in name:
            raise InvalidRequest(f"invalid header name {name[:64]!r}")
    if " " in target or not target.startswith(("/", "*")):
        raise InvalidRequest("invalid request target")
    try:
        encoded = head.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: bytes a handler sent that were not UTF-8
        raise InvalidRequest("a header name or value is not UTF-8 text") from None
    return encoded + _CRLF + body


def _first_too_long(fields: bytes, max_line: int) -> int:
    """The index of the first header whose line reaches ``max_line`` bytes, else -1."""
    for i, (name, value) in enumerate(_FIELD.findall(fields)):
        if len(name) + len(value) >= max_line:
            return i
    return -1


class ResponseParser:
    """One response, fed as it arrives.

    ``max_line``: one header line (the status line too); ``max_head``: the header
    block; ``max_body``: the body (decoded from chunks). :meth:`feed` returns the
    :class:`Response` once complete (bytes past its end mark the connection not
    reusable), :meth:`feed_eof` when the peer closed. Not reusable after that.
    """

    __slots__ = (
        "_block",
        "_buf",
        "_chunks",
        "_headers",
        "_keep_alive",
        "_keep_alive_timeout",
        "_line_start",
        "_max_body",
        "_max_head",
        "_max_line",
        "_mode",
        "_no_body",
        "_remaining",
        "_size",
        "_status",
    )

    def __init__(self, *, max_line: int, max_head: int, max_body: int, no_body: bool = False):
        self._max_line = max_line
        self._max_head = max_head
        self._max_body = max_body
        self._no_body = no_body
        """The request was HEAD: its answer has no body whatever it says."""
        self._buf = b""
        """A partial chunk-size line or chunk end (both short)."""
        self._block = bytearray()
        """A partial header (or trailer) block: searched from where the last search
        ended, so that a block fed in small pieces costs linear time."""
        self._line_start = 0
        """Where the block's last (partial) line starts."""
        self._mode = "head"
        self._status = 0
        self._headers: tuple[tuple[str, str], ...] = ()
        self._keep_alive = True
        self._keep_alive_timeout: int | None = None
        self._remaining = 0
        self._chunks: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> Response | None:
        """Take ``data``; the response once it is complete, else None."""
        if self._mode == "head" and not self._block:
            # The usual answer: its whole head in one piece, and its whole body with it.
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                if end + 4 > self._max_head:
                    raise HttpResponseError("response header block too large")
                done = self._head(data[:end])
                data = data[end + 4 :]
                if done:
                    return self._finish(data)
                if done is not None and self._mode == "length" and len(data) == self._remaining:
                    self._chunks.append(data)
                    return self._finish(b"")
                # A 1xx (the answer follows), or a body to come in pieces: the general way.
        buf = self._buf + data if self._buf else data
        self._buf = b""
        while True:
            mode = self._mode
            if mode == "head":
                found = self._take_block(buf, "response header block too large")
                if found is None:
                    return None
                block, buf = found
                done = self._head(block)
                if done is None:  # an interim 1xx answer: the real one follows
                    continue
                if done:
                    return self._finish(buf)
            elif mode == "length":
                rest = self._take(buf)
                return None if rest is None else self._finish(rest)
            elif mode == "close":
                if buf:
                    self._size += len(buf)
                    if self._size > self._max_body:
                        raise ResponseTooLarge(self._status)
                    self._chunks.append(buf)
                return None
            elif mode == "chunk-size":
                end = buf.find(_CRLF)
                if end < 0:
                    if len(buf) > MAX_CHUNK_LINE:
                        raise HttpResponseError("chunk size line too long")
                    self._buf = buf
                    return None
                if end > MAX_CHUNK_LINE:
                    raise HttpResponseError("chunk size line too long")
                size = _chunk_size(buf[:end])
                buf = buf[end + 2 :]
                if size == 0:
                    # The trailer section ends like a header block: at CRLF CRLF, counting
                    # the CRLF of the last chunk's line (none: an empty line at once).
                    self._block += _CRLF
                    self._mode = "trailers"
                    continue
                self._size += size
                if self._size > self._max_body:
                    raise ResponseTooLarge(self._status)
                self._remaining = size
                self._mode = "chunk-data"
            elif mode == "chunk-data":
                rest = self._take(buf)
                if rest is None:
                    return None
                buf = rest
                self._mode = "chunk-end"
            elif mode == "chunk-end":
                if len(buf) < 2:
                    if buf and buf != b"\r":
                        raise HttpResponseError("chunk data not followed by CRLF")
                    self._buf = buf
                    return None
                if buf[:2] != _CRLF:
                    raise HttpResponseError("chunk data not followed by CRLF")
                buf = buf[2:]
                self._mode = "chunk-size"
            elif mode == "trailers":  # trailer fields are read and dropped
                found = self._take_block(buf, "response trailers too large")
                return None if found is None else self._finish(found[1])
            else:
                raise HttpResponseError("response already complete")

    def _take(self, buf: bytes) -> bytes | None:
        """Keep the body bytes still due out of ``buf``: what follows them, or None
        while more are due."""
        need = self._remaining
        if len(buf) < need:
            self._remaining -= len(buf)
            if buf:
                self._chunks.append(buf)
            return None
        self._chunks.append(buf[:need])
        return buf[need:]

    def feed_eof(self) -> Response:
        """The peer closed: the response if its body ran until the close; raises
        :class:`HttpResponseError` if the connection ended inside a response."""
        if self._mode == "close":
            self._keep_alive = False
            return self._finish(b"")
        if self._mode == "head" and not self._block:
            raise HttpResponseError("connection closed before a response")
        raise HttpResponseError("connection closed inside the response")

    @property
    def started(self) -> bool:
        """Whether any byte of the response has arrived."""
        return bool(self._block) or self._mode != "head" or self._status != 0

    def _take_block(self, data: bytes, too_large: str) -> tuple[bytes, bytes] | None:
        """Add ``data`` to the block being read: (the block without its CRLF CRLF, the
        bytes after it) once it is whole, else None. Each byte is searched once: the
        end from where the last search stopped (less 3: CRLF CRLF may straddle), the
        last line's start in the new bytes only."""
        acc = self._block
        start = len(acc)
        if start:
            acc += data
            end = acc.find(b"\r\n\r\n", max(0, start - 3))
        else:
            end = data.find(b"\r\n\r\n")  # the usual case: a whole head in one piece
        if end < 0:
            if not start:
                acc += data
            if len(acc) > self._max_head:
                raise HttpResponseError(too_large)
            last = acc.rfind(_CRLF, max(self._line_start, start - 1))
            if last >= 0:
                self._line_start = last + 2
            if len(acc) - self._line_start > self._max_line:
                raise HttpResponseError("response header line too long")
            return None
        if end + 4 > self._max_head:
            raise HttpResponseError(too_large)
        whole = bytes(acc) if start else data
        acc.clear()
        self._line_start = 0
        return whole[:end], whole[end + 4 :]

    def _head(self, block: bytes) -> bool | None:
        """Parse the status line and headers; None for a 1xx to skip, True when the
        response has no body, False when the body follows."""
        first = block.find(_CRLF)
        status_line = block if first < 0 else block[:first]
        if len(status_line) > self._max_line:
            raise HttpResponseError("response header line too long")
        version, status = _status_of(status_line)
        if first < 0:
            headers, length, chunked, connection, keep_alive_timeout = _NO_FIELDS
        else:
            raw = block[first + 2 :] + _CRLF
            # A handler answers with the same few heads (but for Date): small ones are
            # read once (a pure function of the bytes and the limit; errors are not kept).
            read = _read_remembered if len(raw) <= REMEMBERED_HEAD_BYTES else _read_fields
            headers, length, chunked, connection, keep_alive_timeout = read(raw, self._max_line)
        if 100 <= status <= 199:
            if status == 101:
                raise HttpResponseError("unexpected 101 Switching Protocols")
            return None
        self._status = status
        self._headers = headers
        self._keep_alive_timeout = keep_alive_timeout
        if not connection:
            self._keep_alive = version != b"HTTP/1.0"
        else:
            tokens = {t.strip() for t in connection.split(",")}
            if version == b"HTTP/1.0":
                self._keep_alive = "keep-alive" in tokens
            else:
                self._keep_alive = "close" not in tokens
        if self._no_body or status in _NO_BODY:
            return True
        if chunked:
            if length is not None:  # RFC 9112 §6.1: a request smuggling sign
                raise HttpResponseError("both Transfer-Encoding and Content-Length")
            self._mode = "chunk-size"
            return False
        if length is not None:
            if length > self._max_body:
                raise ResponseTooLarge(status)
            if length == 0:
                return True
            self._remaining = length
            self._mode = "length"
            return False
        self._mode = "close"
        self._keep_alive = False
        return False

    def _finish(self, rest: bytes) -> Response:
        self._mode = "done"
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        reusable = self._keep_alive and not rest
        return Response(self._status, self._headers, body, reusable, self._keep_alive_timeout)


_Fields = tuple[tuple[tuple[str, str], ...], int | None, bool, str, int | None]
"""The header fields, the Content-Length, chunked, the Connection values (each after
a comma, lower-cased), the Keep-Alive timeout."""
_NO_FIELDS: _Fields = ((), None, False, "", None)
REMEMBERED_HEADS = 64
REMEMBERED_HEAD_BYTES = 2048


def _read_fields(raw: bytes, max_line: int) -> _Fields:
    """The header lines of a response (``raw``: after the status line, each line ending
    in CRLF) with its framing headers checked."""
    # Decoded once (UTF-8, undecodable bytes kept as surrogates): every line break,
    # colon and blank is ASCII, so each name and value decodes as it would alone. One
    # pass in C checks every line (token name, colon, no stray CR/LF/NUL), a second
    # splits them.
    fields = raw.decode("utf-8", "surrogateescape")
    if _FIELDS_TEXT.fullmatch(fields) is None:
        raise HttpResponseError("malformed response header")
    found = _FIELD_TEXT.findall(fields)
    if " \r\n" in fields or "\t\r\n" in fields:  # blanks after a value: not its own
        found = [(name, value.rstrip(" \t")) for name, value in found]
    if len(found) > MAX_HEADER_COUNT:
        raise HttpResponseError(f"more than {MAX_HEADER_COUNT} response headers")
    too_long = -1
    if len(raw) > max_line:  # a line may be as long as the limit (in bytes)
        too_long = _first_too_long(raw, max_line)
        if too_long >= 0:  # the headers before it are checked first, as in order
            found = found[:too_long]
    length: int | None = None
    chunked = False
    connection = ""
    keep_alive_timeout = None
    for name, text in found:
        lowered = name.lower()
        if lowered not in _FRAMING:
            continue
        if lowered == "content-length":
            if length is not None and _length(text) != length:
                raise HttpResponseError("conflicting Content-Length headers")
            length = _length(text)
        elif lowered == "transfer-encoding":
            # We send no TE: ``chunked`` alone is the only coding an answer may have.
            if text.lower() != "chunked" or chunked:
                raise HttpResponseError(f"unsupported Transfer-Encoding {text[:64]!r}")
            chunked = True
        elif lowered == "keep-alive":
            keep_alive_timeout = _keep_alive_timeout(text)
        else:
            connection += "," + text.lower()
    if too_long >= 0:
        raise HttpResponseError("response header line too long")
    return tuple(found), length, chunked, connection, keep_alive_timeout


_read_remembered = functools.lru_cache(maxsize=REMEMBERED_HEADS)(_read_fields)
""":func:`_read_fields` of the last heads read (bounded: only small ones go through it)."""


def _status_of(line: bytes) -> tuple[bytes, int]:
    version, sep, rest = line.partition(b" ")
    if not sep or version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HttpResponseError("not an HTTP/1.x status line")
    code = rest[:3]
    if len(code) != 3 or not code.isdigit() or (len(rest) > 3 and rest[3:4] != b" "):
        raise HttpResponseError("malformed status line")
    status = int(code)
    if status < 100:
        raise HttpResponseError("malformed status line")
    return version, status


def _keep_alive_timeout(text: str) -> int | None:
    """``timeout=N`` of a ``Keep-Alive`` value (``timeout=5, max=1000``), else None."""
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name.strip().lower() == "timeout":
            value = value.strip()
            if value.isascii() and value.isdigit() and len(value) <= 9:
                return int(value)
    return None


def _length(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise HttpResponseError("malformed Content-Length")
    return int(text)


def _chunk_size(line: bytes) -> int:
    size = line.split(b";", 1)[0].strip(b" \t")
    if not size or len(size) > 15 or size.strip(b"0123456789abcdefABCDEF"):
        raise HttpResponseError("malformed chunk size")
    return int(size, 16)
