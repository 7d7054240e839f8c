"""The webhook client's HTTP/1.1 framing: literal responses, bounds, and hypothesis
round trips fed in arbitrary pieces."""

from __future__ import annotations

import itertools
import re
import time

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from webpubsub.protocol import http1
from webpubsub.protocol.http1 import (
    MAX_HEADER_COUNT,
    HttpResponseError,
    InvalidRequest,
    Response,
    ResponseParser,
    ResponseTooLarge,
    encode_request,
)

LINE, HEAD, BODY = 1024, 4096, 10_000


def parser(*, max_body: int = BODY, no_body: bool = False) -> ResponseParser:
    return ResponseParser(max_line=LINE, max_head=HEAD, max_body=max_body, no_body=no_body)


def parse(data: bytes, **kwargs: object) -> Response | None:
    return parser(**kwargs).feed(data)  # type: ignore[arg-type]


def test_a_content_length_response_with_its_headers_in_order() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-A: 1\r\nx-a:  2 \r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )
    assert parse(raw) == Response(
        200,
        (("Content-Type", "text/plain"), ("X-A", "1"), ("x-a", "2"), ("Content-Length", "5")),
        b"hello",
        True,
    )


def test_a_chunked_response_with_extensions_and_trailers() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n1\r\n!\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    response = parse(raw)
    assert response is not None and response.body == b"hello!" and response.reusable


def test_interim_answers_are_skipped_and_204_has_no_body() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n"
    assert parse(raw) == Response(204, (("Content-Length", "7"),), b"", True)


def test_a_head_answer_has_no_body_whatever_it_says() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n"
    assert parse(raw, no_body=True) == Response(200, (("Content-Length", "7"),), b"", True)


@pytest.mark.parametrize(
    ("raw", "reusable"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n", False),  # extra
    ],
)
def test_when_the_connection_may_carry_another_request(raw: bytes, reusable: bool) -> None:
    response = parse(raw)
    assert response is not None and response.reusable is reusable


def test_a_body_without_length_runs_until_the_close() -> None:
    p = parser()
    assert p.feed(b"HTTP/1.1 200 OK\r\n\r\nsome") is None
    assert p.feed(b" body") is None
    assert p.feed_eof() == Response(200, (), b"some body", False)


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nContent-",
        b"",
    ],
)
def test_a_close_inside_a_response_is_an_error(raw: bytes) -> None:
    p = parser()
    assert p.feed(raw) is None
    with pytest.raises(HttpResponseError, match="connection closed"):
        p.feed_eof()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"HTTP/2 200 OK\r\n\r\n", "not an HTTP/1.x status line"),
        (b"ICY 200 OK\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 200OK\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "malformed response header"),
        (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", "malformed response header"),
        (b"HTTP/1.1 200 OK\r\n: x\r\n\r\n", "malformed response header"),
        (b"HTTP/1.1 200 OK\r\nA: x\ry\r\n\r\n", "malformed response header"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "malformed Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", "malformed Content-Length"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "conflicting Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "both Transfer-Encoding and Content-Length",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "unsupported Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab", "not followed by CRLF"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "unexpected 101"),
        (b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 000 Odd\r\nContent-Length: 0\r\n\r\n", "malformed status line"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "unsupported Transfer-Encoding",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            "unsupported Transfer-Encoding",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n0\r\n\r\n",
            "unsupported Transfer-Encoding",
        ),
    ],
)
def test_malformed_responses_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(HttpResponseError, match=message):
        parse(raw)


def test_every_size_is_bounded() -> None:
    with pytest.raises(HttpResponseError, match="header line too long"):
        parse(b"HTTP/1.1 200 OK\r\nX: " + b"a" * LINE)
    with pytest.raises(HttpResponseError, match="header block too large"):
        parse(b"HTTP/1.1 200 OK\r\n" + b"X: aaaaaaaa\r\n" * (HEAD // 10))
    many = b"".join(b"X: a\r\n" for _ in range(MAX_HEADER_COUNT + 1))
    with pytest.raises(HttpResponseError, match="response headers"):
        ResponseParser(max_line=LINE, max_head=10 * HEAD, max_body=BODY).feed(
            b"HTTP/1.1 200 OK\r\n" + many + b"\r\n"
        )
    with pytest.raises(ResponseTooLarge) as declared:
        parse(b"HTTP/1.1 201 Created\r\nContent-Length: 11\r\n\r\n", max_body=10)
    assert declared.value.status == 201
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\n"
    with pytest.raises(ResponseTooLarge):
        parse(chunked, max_body=10)
    p = parser(max_body=10)
    p.feed(b"HTTP/1.1 200 OK\r\n\r\n123456")
    with pytest.raises(ResponseTooLarge):
        p.feed(b"78901")
    with pytest.raises(HttpResponseError, match="chunk size line too long"):
        parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;" + b"x" * 2000)
    with pytest.raises(HttpResponseError, match="trailers too large"):
        parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + b"T: x\r\n" * HEAD)


def test_a_trailer_fed_byte_by_byte_is_counted_once() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
        b"X-T: " + b"v" * 1000 + b"\r\n\r\n"
    )
    p = parser()
    got = None
    for i in range(len(raw)):
        assert got is None
        got = p.feed(raw[i : i + 1])
    assert got == Response(200, (("Transfer-Encoding", "chunked"),), b"a", True)


def _head_of(size: int) -> bytes:
    line = b"X-Long: " + b"a" * 990 + b"\r\n"  # 1000 bytes: under the header count too
    return b"HTTP/1.1 200 OK\r\n" + line * (size // len(line)) + b"Content-Length: 0\r\n\r\n"


def _seconds_to_feed(head: bytes, piece: int) -> float:
    best = float("inf")
    for _ in range(3):
        p = ResponseParser(max_line=128 * 1024, max_head=256 * 1024, max_body=BODY)
        started = time.perf_counter()
        got = None
        for i in range(0, len(head), piece):
            got = p.feed(head[i : i + piece])
        best = min(best, time.perf_counter() - started)
        assert got is not None and got.status == 200
    return best


def test_a_head_fed_in_small_pieces_parses_in_linear_time() -> None:
    """4x the bytes must cost about 4x (quadratic: 16x); the factor is generous for a
    loaded machine, and each figure is the best of three."""
    small, large = _head_of(50 * 1024), _head_of(200 * 1024)
    ratio = _seconds_to_feed(large, 16) / _seconds_to_feed(small, 16)
    assert ratio < 9, ratio


def test_a_keep_alive_timeout_is_read() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
    got = parse(ok + b"Keep-Alive: timeout=5, max=1000\r\n\r\n")
    assert got is not None and got.keep_alive_timeout == 5
    for value in (b"max=3", b"timeout=x", b"timeout=-1", b""):
        got = parse(ok + b"Keep-Alive: " + value + b"\r\n\r\n")
        assert got is not None and got.keep_alive_timeout is None, value
    got = parse(ok + b"\r\n")
    assert got is not None and got.keep_alive_timeout is None


def test_a_request_carries_host_length_and_headers() -> None:
    data = encode_request("POST", "/h?code=1", "example.com:8080", [("ce-id", "1")], b"body")
    assert data == (
        b"POST /h?code=1 HTTP/1.1\r\nHost: example.com:8080\r\nce-id: 1\r\n"
        b"Content-Length: 4\r\n\r\nbody"
    )
    assert (
        encode_request("OPTIONS", "/h", "h", (), b"") == b"OPTIONS /h HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    assert b"Content-Length: 0\r\n" in encode_request("POST", "/h", "h", (), b"")


@pytest.mark.parametrize(
    "header",
    [
        ("ce-connectionState", "a\r\nInjected: yes"),
        ("ce-connectionState", "a\nb"),
        ("ce-connectionState", "a\rb"),
        ("X", "a\0b"),
        ("Bad:Name", "x"),
        ("Bad Name", "x"),
        ("", "x"),
        ("ce-connectionState", "\udcff\udcfe"),  # a handler's non-UTF-8 bytes, kept
    ],
)
def test_a_header_that_would_break_the_framing_is_refused(header: tuple[str, str]) -> None:
    with pytest.raises(InvalidRequest):
        encode_request("POST", "/h", "h", [header], b"")


# -- properties ------------------------------------------------------------------

_token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
    min_size=1,
    max_size=20,
)
_value = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E) | st.sampled_from(" é€"),
    max_size=40,
).map(str.strip)
_headers = st.lists(
    st.tuples(_token, _value).filter(
        lambda h: h[0].lower() not in ("content-length", "transfer-encoding", "connection")
    ),
    max_size=8,
)


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


def _feed_all(p: ResponseParser, pieces: list[bytes]) -> Response | None:
    got = None
    for piece in pieces:
        assert got is None, "bytes after a complete response"
        got = p.feed(piece)
    return got


@given(
    status=st.integers(200, 599).filter(lambda s: s not in (204, 304)),
    headers=_headers,
    body=st.binary(max_size=3000),
    chunked=st.booleans(),
    chunk_sizes=st.lists(st.integers(1, 700), min_size=1, max_size=10),
    trailers=st.lists(
        st.tuples(_token, _value | st.text("tv", min_size=300, max_size=900)), max_size=3
    ),
    cuts=st.lists(st.integers(0, 10_000), max_size=40),
)
def test_a_response_parses_back_however_it_is_split(
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    chunked: bool,
    chunk_sizes: list[int],
    trailers: list[tuple[str, str]],
    cuts: list[int],
) -> None:
    head = f"HTTP/1.1 {status} Reason\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    if chunked:
        framing = ("Transfer-Encoding", "chunked")
        encoded, rest, i = b"", body, 0
        while rest:
            size = chunk_sizes[i % len(chunk_sizes)]
            encoded += b"%x\r\n" % len(rest[:size]) + rest[:size] + b"\r\n"
            rest, i = rest[size:], i + 1
        fields = "".join(f"{k}: {v}\r\n" for k, v in trailers).encode()
        encoded += b"0\r\n" + fields + b"\r\n"
    else:
        framing = ("Content-Length", str(len(body)))
        encoded = body
    raw = (head + f"{framing[0]}: {framing[1]}\r\n\r\n").encode() + encoded
    at_once = parser().feed(raw)
    assert at_once == Response(status, (*headers, framing), body, True)
    assert _feed_all(parser(), _pieces(raw, cuts)) == at_once
    # byte by byte, the worst split
    assert _feed_all(parser(), [raw[i : i + 1] for i in range(len(raw))]) == at_once


@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=6))
def test_arbitrary_bytes_raise_only_the_parsers_error(data: bytes, cuts: list[int]) -> None:
    p = ResponseParser(max_line=64, max_head=256, max_body=128)
    try:
        for piece in _pieces(data, cuts):
            if p.feed(piece) is not None:
                break
        else:
            p.feed_eof()
    except HttpResponseError:
        pass


@given(
    prefix=st.sampled_from(
        [b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
    ),
    data=st.binary(max_size=400),
)
def test_arbitrary_bytes_after_a_status_line_raise_only_the_parsers_error(
    prefix: bytes, data: bytes
) -> None:
    p = ResponseParser(max_line=64, max_head=256, max_body=128)
    try:
        if p.feed(prefix + data) is None:
            p.feed_eof()
    except HttpResponseError:
        pass


# -- the header block against the parser it replaced ---------------------------------

_OLD_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_OLD_FIELD = re.compile(rb"(" + _OLD_TOKEN + rb"):[ \t]*([^\r\n\0]*)\r\n")
_OLD_FIELDS = re.compile(rb"(?:" + _OLD_TOKEN + rb":[^\r\n\0]*\r\n)*")


class _ReferenceParser(ResponseParser):
    """The parser with the header block read the way it was before the block was decoded
    once (each name and value decoded alone, every line measured): the reference."""

    def _head(self, block: bytes) -> bool | None:
        first = block.find(b"\r\n")
        status_line = block if first < 0 else block[:first]
        if len(status_line) > self._max_line:
            raise HttpResponseError("response header line too long")
        version, status = http1._status_of(status_line)
        headers: list[tuple[str, str]] = []
        length: int | None = None
        chunked = False
        connection = ""
        keep_alive_timeout = None
        if first >= 0:
            fields = block[first + 2 :] + b"\r\n"
            if _OLD_FIELDS.fullmatch(fields) is None:
                raise HttpResponseError("malformed response header")
            found = _OLD_FIELD.findall(fields)
            if len(found) > MAX_HEADER_COUNT:
                raise HttpResponseError(f"more than {MAX_HEADER_COUNT} response headers")
            for name, value in found:
                if len(name) + len(value) >= self._max_line:
                    raise HttpResponseError("response header line too long")
                key = name.decode("utf-8", "surrogateescape")
                text = value.rstrip(b" \t").decode("utf-8", "surrogateescape")
                headers.append((key, text))
                lowered = key.lower()
                if lowered == "content-length":
                    if length is not None and http1._length(text) != length:
                        raise HttpResponseError("conflicting Content-Length headers")
                    length = http1._length(text)
                elif lowered == "transfer-encoding":
                    if text.lower() != "chunked" or chunked:
                        raise HttpResponseError(f"unsupported Transfer-Encoding {text[:64]!r}")
                    chunked = True
                elif lowered == "keep-alive":
                    keep_alive_timeout = http1._keep_alive_timeout(text)
                elif lowered == "connection":
                    connection += "," + text.lower()
        if 100 <= status <= 199:
            if status == 101:
                raise HttpResponseError("unexpected 101 Switching Protocols")
            return None
        self._status = status
        self._headers = tuple(headers)
        self._keep_alive_timeout = keep_alive_timeout
        tokens = {t.strip() for t in connection.split(",")}
        if version == b"HTTP/1.0":
            self._keep_alive = "keep-alive" in tokens
        else:
            self._keep_alive = "close" not in tokens
        if self._no_body or status in (204, 304):
            return True
        if chunked:
            if length is not None:
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


_name_bytes = st.sampled_from(
    [
        *(b"Content-Length", b"content-length", b"Transfer-Encoding", b"Connection"),
        *(b"Keep-Alive", b"X-A", b"ce-connectionState", b"Content-Type", b"bad name", b""),
        b"\xc3\xa9",
    ]
) | st.binary(min_size=1, max_size=70)
_value_bytes = st.sampled_from(
    [
        *(b"0", b"5", b"12", b"chunked", b"Chunked", b"gzip", b"close", b"keep-alive"),
        *(b"timeout=5, max=9", b" \t", b"\xe2\x82", b"\xe2\x82\xac", b"\xff", b"a\rb"),
        b"\x00",
    ]
) | st.binary(max_size=80)
_version_line = st.sampled_from(
    [b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 100 Continue", b"HTTP/1.1 204 No"]
)


def _outcome(p: ResponseParser, pieces: list[bytes]) -> object:
    try:
        got = None
        for piece in pieces:
            got = p.feed(piece)
            if got is not None:
                break
        else:
            got = p.feed_eof()
    except HttpResponseError as exc:
        return type(exc), str(exc)
    return got


@given(
    status_line=_version_line,
    fields=st.lists(
        st.tuples(
            _name_bytes,
            st.sampled_from([b":", b": ", b":\t ", b" :"]),
            _value_bytes,
            st.sampled_from([b"", b" ", b"\t \t"]),
        ),
        max_size=8,
    ),
    after=st.sampled_from([b"", b"abcde", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"]),
    max_line=st.sampled_from([16, 40, 1024]),
    cuts=st.lists(st.integers(0, 2000), max_size=4),
)
@example(  # a line too long, then a framing header that is wrong: the line is named
    status_line=b"HTTP/1.1 200 OK",
    fields=[(b"X-A", b": ", b"v" * 20, b""), (b"Content-Length", b": ", b"x", b"")],
    after=b"",
    max_line=16,
    cuts=[],
)
def test_a_header_block_reads_as_the_per_header_parser_read_it(
    status_line: bytes,
    fields: list[tuple[bytes, bytes, bytes, bytes]],
    after: bytes,
    max_line: int,
    cuts: list[int],
) -> None:
    # Names, values and blanks the way handlers send them and not: framing headers,
    # UTF-8 split and broken, controls, lines as long as the limit and longer.
    head = status_line + b"\r\n" + b"".join(n + c + v + b + b"\r\n" for n, c, v, b in fields)
    raw = head + b"\r\n" + after
    for pieces in ([raw], _pieces(raw, cuts)):
        new = ResponseParser(max_line=max_line, max_head=4096, max_body=64)
        old = _ReferenceParser(max_line=max_line, max_head=4096, max_body=64)
        assert _outcome(new, pieces) == _outcome(old, pieces)


def test_a_head_read_before_is_read_the_same_under_other_limits() -> None:
    """Small heads are remembered once read: the same head under a smaller line limit
    is still refused, and a head refused once is refused again."""
    raw = b"HTTP/1.1 200 OK\r\nX-Long: " + b"v" * 100 + b"\r\nContent-Length: 0\r\n\r\n"
    wide = ResponseParser(max_line=1024, max_head=4096, max_body=10)
    assert wide.feed(raw) == Response(
        200, (("X-Long", "v" * 100), ("Content-Length", "0")), b"", True
    )
    for _ in range(2):
        with pytest.raises(HttpResponseError, match="header line too long"):
            ResponseParser(max_line=64, max_head=4096, max_body=10).feed(raw)
    bad = b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"
    for _ in range(2):
        with pytest.raises(HttpResponseError, match="malformed Content-Length"):
            parse(bad)
