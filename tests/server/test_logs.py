"""The JSON log format: one object per line, with the hub, connection id and user id of
the records about one connection; never a secret (the access key, a token, a signature,
the ``?code=`` of a handler's URL), in a failed user event's line or a refused token's.
``webpubsub serve --log-format json`` writes its log that way."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import ACCESS_KEY, StartService
from tests.support.cli import spawn_cli
from tests.support.handler import EventHandlerApp, Recorded, default_responder
from tests.support.service import chat_hub, json_client
from webpubsub.node.observe import log_fields
from webpubsub.protocol.tokens import issue_client_token, issue_rest_token
from webpubsub.server.logs import JsonFormatter, use_log_format

WAIT = 10.0
SECRET_CODE = "s3cr3t-function-code"
WRONG_KEY = "not-the-access-key-0123456789-abcdefghijkl"


def record(
    msg: object = "hello %s", args: tuple[object, ...] = ("there",), **extra: object
) -> logging.LogRecord:
    rec = logging.LogRecord("webpubsub.node", logging.WARNING, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def fmt(rec: logging.LogRecord) -> dict[str, object]:
    line = JsonFormatter().format(rec)
    assert "\n" not in line and "\r" not in line
    parsed = orjson.loads(line)
    assert isinstance(parsed, dict)
    return parsed


# -- the formatter -------------------------------------------------------------------


def test_a_record_is_one_object_with_its_fields() -> None:
    rec = record(**log_fields("chat", "conn-1", "alice"))
    rec.created = 1_795_000_000.25
    assert fmt(rec) == {
        "time": "2026-11-18T11:06:40.250Z",
        "level": "WARNING",
        "logger": "webpubsub.node",
        "message": "hello there",
        "hub": "chat",
        "connectionId": "conn-1",
        "userId": "alice",
    }


def test_fields_the_call_did_not_give_are_left_out() -> None:
    assert set(fmt(record())) == {"time", "level", "logger", "message"}
    anonymous = fmt(record(**log_fields("chat", "conn-1", None)))
    assert (anonymous["connectionId"], "userId" in anonymous) == ("conn-1", False)


def test_an_exception_is_its_traceback_text() -> None:
    try:
        raise ValueError("broken\nover two lines")
    except ValueError:
        rec = logging.LogRecord(
            "webpubsub.server", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = fmt(rec)
    exception = line["exception"]
    assert isinstance(exception, str)
    assert exception.startswith("Traceback (most recent call last):")
    assert exception.endswith("ValueError: broken\nover two lines")


def test_arguments_that_do_not_fit_the_format_still_make_a_line() -> None:
    line = fmt(record("%d of %s", ("x",)))
    assert line["message"] == "'%d of %s' % ('x',)"


values = st.one_of(
    st.none(),
    st.text(st.characters(blacklist_categories=())),  # lone surrogates included
    st.integers(),
    st.floats(),
    st.binary(),
    st.lists(st.text(), max_size=3),
)


@given(
    message=st.text(st.characters(blacklist_categories=())),
    args=st.lists(values, max_size=3),
    hub=values,
    connection_id=values,
    user_id=values,
)
def test_any_message_and_fields_make_one_json_line(
    message: str, args: list[object], hub: object, connection_id: object, user_id: object
) -> None:
    rec = record(message, tuple(args), hub=hub, connection_id=connection_id, user_id=user_id)
    line = fmt(rec)
    assert line["level"] == "WARNING"
    assert ("hub" in line) == (hub is not None)


def test_use_log_format_switches_the_root_handlers() -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    try:
        use_log_format("json")
        assert isinstance(handler.formatter, JsonFormatter)
        use_log_format("text")
        assert not isinstance(handler.formatter, JsonFormatter)
    finally:
        root.removeHandler(handler)


# -- secrets never logged --------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def refuse_events(req: Recorded) -> web.StreamResponse:
    if req.method == "POST" and req.ce_type.startswith("azure.webpubsub.user."):
        return web.Response(status=500, text=f"handler failed for {req.headers['ce-signature']}")
    return default_responder(req)


async def test_failed_events_and_refused_tokens_log_no_secret(
    start_service: StartService,
    handler_app: EventHandlerApp,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler_app.responder = refuse_events
    runner = await start_service(chat_hub(f"{handler_app.url}?code={SECRET_CODE}"))
    base = f"http://127.0.0.1:{runner.port}"
    token = issue_client_token(
        ACCESS_KEY, audience=f"{base}/client/hubs/chat", now=time.time(), user_id="alice"
    )
    bad_token = issue_client_token(
        WRONG_KEY, audience=f"{base}/client/hubs/chat", now=time.time(), user_id="mallory"
    )
    caplog.set_level(logging.DEBUG)

    ws, connection_id = await json_client(
        http, f"ws{base[4:]}/client/hubs/chat?access_token={token}"
    )
    await ws.send_json(
        {"type": "event", "event": "boom", "dataType": "text", "data": "x", "ackId": 1}
    )
    ack = await ws.receive_json(timeout=WAIT)
    assert (ack["type"], ack["success"]) == ("ack", False)
    signature = (await handler_app.next_event(".boom")).headers["ce-signature"]
    await ws.close()

    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"ws{base[4:]}/client/hubs/chat?access_token={bad_token}")
    assert refused.value.status == 401
    rest_token = issue_rest_token(
        WRONG_KEY, audience=f"{base}/api/hubs/chat/:send", now=time.time()
    )
    async with http.post(
        f"{base}/api/hubs/chat/:send?api-version=2024-12-01",
        data="x",
        headers={"Authorization": f"Bearer {rest_token}", "Content-Type": "text/plain"},
    ) as resp:
        assert resp.status == 401

    lines = [JsonFormatter().format(r) for r in caplog.records]
    failed = [orjson.loads(x) for x in lines if "boom" in x]
    assert failed, lines
    assert failed[0]["hub"] == "chat"
    assert failed[0]["connectionId"] == connection_id
    assert failed[0]["userId"] == "alice"
    text = "\n".join(lines) + "\n" + "\n".join(r.getMessage() for r in caplog.records)
    for secret in (ACCESS_KEY, WRONG_KEY, token, bad_token, rest_token, SECRET_CODE):
        assert secret not in text
    assert signature.removeprefix("sha256=") not in text


# -- the command --------------------------------------------------------------------


BANNER = re.compile(r"^(No access key given|Listening on |Connection string: |Portal: )")
"""What ``serve`` prints for a person (stdout), not log records."""


@pytest.mark.e2e
async def test_serve_with_log_format_json_logs_json_lines(
    handler_app: EventHandlerApp, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    handler_app.responder = refuse_events
    config = tmp_path / "webpubsub.toml"
    config.write_text(
        f'[server]\ndata_dir = ":memory:"\n'
        f'[[hubs.chat.event_handlers]]\nurl_template = "{handler_app.url}?code={SECRET_CODE}"\n'
        f'user_event_pattern = "*"\n'
    )
    proc = await spawn_cli(
        "serve",
        "--port",
        "0",
        "--access-key",
        ACCESS_KEY,
        "--config",
        str(config),
        "--log-format",
        "json",
    )
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(20):
            while not any(line.startswith("Connection string: ") for line in seen):
                line = (await proc.stdout.readline()).decode()
                assert line, "serve ended early:\n" + "".join(seen)
                seen.append(line)
        port = int(re.search(r"Endpoint=http://localhost:(\d+);", seen[-1]).group(1))  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        token = issue_client_token(
            ACCESS_KEY, audience=f"{base}/client/hubs/chat", now=time.time(), user_id="alice"
        )
        ws, connection_id = await json_client(
            http, f"ws{base[4:]}/client/hubs/chat?access_token={token}"
        )
        await ws.send_json(
            {"type": "event", "event": "boom", "dataType": "text", "data": "x", "ackId": 1}
        )
        assert (await ws.receive_json(timeout=WAIT))["success"] is False
        await ws.close()
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            rest, _ = await proc.communicate()
    seen.extend(rest.decode().splitlines(keepends=True))
    records = []
    for line in seen:
        if BANNER.match(line):
            continue
        parsed = orjson.loads(line)  # every other line is one JSON object
        assert set(parsed) >= {"time", "level", "logger", "message"}, line
        records.append(parsed)
    assert any(r["message"].startswith("webpubsub listening on") for r in records)
    about = [r for r in records if r.get("connectionId") == connection_id]
    assert about, records
    assert about[0]["hub"] == "chat" and about[0]["userId"] == "alice"
    assert "boom" in about[0]["message"]
    logged = "".join(line for line in seen if not BANNER.match(line))
    assert ACCESS_KEY not in logged and SECRET_CODE not in logged and token not in logged
