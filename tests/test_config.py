"""Tests for webpubsub.config: the TOML file, its rules and every problem message."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webpubsub.config import (
    ServerSettings,
    ServiceConfig,
    UpstreamSettings,
    default_config,
    load_config,
    parse_access_keys,
    parse_config,
)
from webpubsub.core.settings import EventHandlerSettings, GroupPresenceEvents, HubSettings
from webpubsub.errors import ConfigError

KEY_A = "A" * 32
KEY_B = "B" * 32
SRC = "webpubsub.toml"


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path so the problem prefix is the bare file name."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load(directory: Path, text: str) -> ServiceConfig:
    (directory / SRC).write_text(text, encoding="utf-8")
    return load_config(SRC)


def problems(directory: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(directory, text)
    assert info.value.problems, "ConfigError without problems"
    return info.value.problems


# --- valid files -------------------------------------------------------------------------


def test_empty_file_gives_the_defaults(in_tmp: Path) -> None:
    assert load(in_tmp, "") == default_config()
    cfg = default_config()
    assert cfg.server == ServerSettings(
        host="127.0.0.1",
        port=8080,
        access_keys=(),
        public_endpoint=None,
        max_message_bytes=1_048_576,
        outbox_max_bytes=4_194_304,
    )
    assert cfg.upstream == UpstreamSettings(timeout_seconds=20.0, validation=True)
    assert dict(cfg.hubs) == {}


def test_full_file(in_tmp: Path) -> None:
    cfg = load(
        in_tmp,
        f"""
[server]
host = "0.0.0.0"
port = 0
access_keys = ["{KEY_A}", "{KEY_B}"]
public_endpoint = "https://PubSub.example.com:8443/"
max_message_bytes = 1024
outbox_max_bytes = 65536

[upstream]
timeout_seconds = 5
validation = false

[hubs.Chat]
anonymous_connect = true
keepalive_seconds = 120
max_groups_per_connection = 50
client_messages_per_second = 30
client_bytes_per_second = 100000

[[hubs.Chat.event_handlers]]
url_template = "http://localhost:5000/eventhandler/{{hub}}/{{event}}?code=abc"
user_event_pattern = " message , chat "
system_events = ["connect", "disconnected"]

[[hubs.Chat.event_handlers]]
url_template = "https://other.example.com/h"
user_event_pattern = "*"
system_events = []
timeout_seconds = 2.5
""",
    )
    assert cfg.server == ServerSettings(
        host="0.0.0.0",
        port=0,
        access_keys=(KEY_A, KEY_B),
        public_endpoint="https://PubSub.example.com:8443",
        max_message_bytes=1024,
        outbox_max_bytes=65536,
    )
    assert cfg.upstream == UpstreamSettings(timeout_seconds=5.0, validation=False)
    assert isinstance(cfg.upstream.timeout_seconds, float)
    assert list(cfg.hubs) == ["chat"]
    assert cfg.hubs["chat"] == HubSettings(
        name="Chat",
        anonymous_connect=True,
        keepalive_seconds=120,
        max_groups_per_connection=50,
        client_messages_per_second=30,
        client_bytes_per_second=100_000,
        event_handlers=(
            EventHandlerSettings(
                url_template="http://localhost:5000/eventhandler/{hub}/{event}?code=abc",
                user_event_pattern="message,chat",
                system_events=frozenset({"connect", "disconnected"}),
                timeout_seconds=5.0,  # from [upstream]
            ),
            EventHandlerSettings(
                url_template="https://other.example.com/h",
                user_event_pattern="*",
                system_events=frozenset(),
                timeout_seconds=2.5,
            ),
        ),
    )


def test_tutorial_chat_hub(in_tmp: Path) -> None:
    cfg = load(
        in_tmp,
        """
[hubs.chat]
[[hubs.chat.event_handlers]]
url_template = "http://localhost:5000/eventhandler"
user_event_pattern = "*"
system_events = ["connected"]
""",
    )
    hub = cfg.hub("chat")
    handler = hub.handler_for_user_event("message")
    assert handler is not None
    assert handler.url_for("chat", "message") == "http://localhost:5000/eventhandler"
    assert hub.handler_for_system_event("connected") is handler
    assert hub.handler_for_system_event("connect") is None
    assert handler.timeout_seconds == 20.0
    assert hub.anonymous_connect is False
    assert hub.keepalive_seconds == 20


def test_handler_defaults(in_tmp: Path) -> None:
    cfg = load(in_tmp, '[[hubs.h.event_handlers]]\nurl_template = "http://a/"\n')
    (handler,) = cfg.hubs["h"].event_handlers
    assert handler == EventHandlerSettings(
        url_template="http://a/",
        user_event_pattern="",
        system_events=frozenset(),
        timeout_seconds=20.0,
    )


def test_group_presence_events_parse_and_route(in_tmp: Path) -> None:
    cfg = load(
        in_tmp,
        """
[[hubs.h.event_handlers]]
url_template = "http://a/"
system_events = ["connected"]
[[hubs.h.event_handlers]]
url_template = "http://rooms/{event}"
group_presence_events = { event_names = ["joined", "left"], group_filters = ["room-*", "lobby"] }
[[hubs.h.event_handlers]]
url_template = "http://all/"
group_presence_events = { event_names = ["left"] }
""",
    )
    hub = cfg.hub("h")
    plain, rooms, every = hub.event_handlers
    assert plain.group_presence_events is None
    assert rooms.group_presence_events == GroupPresenceEvents(
        event_names=frozenset({"joined", "left"}), group_filters=("room-*", "lobby")
    )
    assert hub.wants_group_presence
    # First handler that takes it, in order; filters are * wildcards, case-sensitive.
    assert hub.handler_for_group_presence("joined", "room-1") is rooms
    assert hub.handler_for_group_presence("joined", "room-") is rooms
    assert hub.handler_for_group_presence("joined", "lobby") is rooms
    assert hub.handler_for_group_presence("joined", "lobby2") is None
    assert hub.handler_for_group_presence("joined", "Room-1") is None
    assert hub.handler_for_group_presence("left", "lobby2") is every
    assert hub.handler_for_group_presence("left", "room-1") is rooms
    assert hub.handler_for_group_presence("connected", "room-1") is None
    assert rooms.url_for("h", "joined") == "http://rooms/joined"


def test_group_presence_without_event_names_sends_nothing(in_tmp: Path) -> None:
    cfg = load(
        in_tmp,
        '[[hubs.h.event_handlers]]\nurl_template = "http://a/"\n'
        "group_presence_events = { group_filters = ['*'] }\n",
    )
    assert cfg.hub("h").handler_for_group_presence("joined", "g") is None
    assert not load(in_tmp, "[hubs.h]\n").hub("h").wants_group_presence


@given(
    filt=st.text(alphabet="ab*.?[", min_size=1, max_size=6),
    group=st.text(alphabet="ab.?[", max_size=6),
)
def test_a_group_filter_is_a_star_wildcard_and_nothing_else(filt: str, group: str) -> None:
    presence = GroupPresenceEvents(frozenset({"joined"}), (filt,))
    parts = filt.split("*")
    expected = (
        len(group) >= sum(map(len, parts))
        and group.startswith(parts[0])
        and group.endswith(parts[-1])
        and _in_order(group[len(parts[0]) : len(group) - len(parts[-1])], parts[1:-1])
        if len(parts) > 1
        else group == filt
    )
    assert presence.matches("joined", group) is expected
    assert presence.matches("left", group) is False


def _in_order(text: str, parts: list[str]) -> bool:
    pos = 0
    for part in parts:
        found = text.find(part, pos)
        if found < 0:
            return False
        pos = found + len(part)
    return True


def test_access_keys_as_one_comma_separated_string(in_tmp: Path) -> None:
    cfg = load(in_tmp, f'[server]\naccess_keys = "{KEY_A} , {KEY_B}"\n')
    assert cfg.server.access_keys == (KEY_A, KEY_B)


@pytest.mark.parametrize(
    "name",
    ["a", "Z", "chat_1", "a`b,c.d[e]", "x" * 128, "_default", "_DEFAULT"],
)
def test_valid_hub_names(in_tmp: Path, name: str) -> None:
    cfg = load(in_tmp, f"[hubs.'{name}']\n")
    assert list(cfg.hubs) == [name.lower()]
    assert cfg.hubs[name.lower()].name == name


@pytest.mark.parametrize(
    "template",
    [
        "http://localhost:5000/eventhandler",
        "https://app.example.com/eventhandler/{hub}/{event}",
        "http://127.0.0.1:7071/runtime/webhooks/webpubsub?code=abc&hub={hub}",
        "HTTP://[::1]:8080/{event}",
    ],
)
def test_valid_url_templates(in_tmp: Path, template: str) -> None:
    cfg = load(in_tmp, f'[[hubs.h.event_handlers]]\nurl_template = "{template}"\n')
    assert cfg.hubs["h"].event_handlers[0].url_template == template


@pytest.mark.parametrize(
    ("pattern", "stored"),
    [("", ""), ("  ", ""), ("*", "*"), ("message", "message"), ("a , b.c-d_e", "a,b.c-d_e")],
)
def test_valid_user_event_patterns(in_tmp: Path, pattern: str, stored: str) -> None:
    text = (
        f'[[hubs.h.event_handlers]]\nurl_template = "http://a/"\nuser_event_pattern = "{pattern}"\n'
    )
    assert load(in_tmp, text).hubs["h"].event_handlers[0].user_event_pattern == stored


# --- one rule, one problem -------------------------------------------------------------------

H = "[[hubs.chat.event_handlers]]\n"
U = 'url_template = "http://localhost:5000/eventhandler"\n'
HP = f"{SRC}: hubs.chat.event_handlers[0]"

CASES: list[tuple[str, str]] = [
    ("sever = 1\n", f"{SRC}: sever: unknown key"),
    ("server = 1\n", f"{SRC}: server: expected a table, got 1"),
    ("[server]\nhots = 'x'\n", f"{SRC}: server.hots: unknown key"),
    ("[server]\nhost = 1\n", f"{SRC}: server.host: expected a string, got 1"),
    ("[server]\nhost = ''\n", f'{SRC}: server.host: expected a host name or address, got ""'),
    ("[server]\nport = '80a'\n", f'{SRC}: server.port: expected an integer 0..65535, got "80a"'),
    ("[server]\nport = true\n", f"{SRC}: server.port: expected an integer 0..65535, got true"),
    ("[server]\nport = 80.0\n", f"{SRC}: server.port: expected an integer 0..65535, got 80.0"),
    ("[server]\nport = -1\n", f"{SRC}: server.port: expected an integer 0..65535, got -1"),
    ("[server]\nport = 65536\n", f"{SRC}: server.port: expected an integer 0..65535, got 65536"),
    (
        "[server]\nmax_message_bytes = 1023\n",
        f"{SRC}: server.max_message_bytes: expected an integer >= 1024, got 1023",
    ),
    (
        "[server]\noutbox_max_bytes = 65535\n",
        f"{SRC}: server.outbox_max_bytes: expected an integer >= 65536, got 65535",
    ),
    (
        "[server]\naccess_keys = 12\n",
        f"{SRC}: server.access_keys: expected an array of strings, got an integer",
    ),
    (
        f"[server]\naccess_keys = ['{KEY_A}', 'short-key-12']\n",
        f"{SRC}: server.access_keys[1]: too short (12 characters, need at least 32)",
    ),
    (
        f"[server]\naccess_keys = ['{KEY_A}', 5]\n",
        f"{SRC}: server.access_keys[1]: expected a string, got an integer",
    ),
    (
        f"[server]\naccess_keys = ['{KEY_A} x']\n",
        f"{SRC}: server.access_keys[0]: must not contain whitespace or commas",
    ),
    (
        f"[server]\naccess_keys = ['{KEY_B}', '{KEY_A}', '{KEY_B}']\n",
        f"{SRC}: server.access_keys[2]: same key as server.access_keys[0]",
    ),
    (
        "[server]\npublic_endpoint = 'pubsub.example.com'\n",
        f"{SRC}: server.public_endpoint: expected an absolute http:// or https:// URL, "
        'got "pubsub.example.com"',
    ),
    (
        "[server]\npublic_endpoint = 'ftp://pubsub.example.com'\n",
        f"{SRC}: server.public_endpoint: expected an absolute http:// or https:// URL, "
        'got "ftp://pubsub.example.com"',
    ),
    (
        "[server]\npublic_endpoint = 'https://pubsub.example.com/api'\n",
        f"{SRC}: server.public_endpoint: must be scheme://host[:port] only, "
        'got "https://pubsub.example.com/api"',
    ),
    (
        "[server]\npublic_endpoint = 'https://pubsub.example.com?x=1'\n",
        f"{SRC}: server.public_endpoint: must be scheme://host[:port] only, "
        'got "https://pubsub.example.com?..."',
    ),
    (
        "[server]\npublic_endpoint = 'https://:443'\n",
        f'{SRC}: server.public_endpoint: the URL has no host, got "https://:443"',
    ),
    (
        "[server]\npublic_endpoint = 'https://u:p@h'\n",
        f'{SRC}: server.public_endpoint: the URL must not contain user info, got "https://***@h"',
    ),
    (
        "[server]\npublic_endpoint = 'https://h:99999'\n",
        f"{SRC}: server.public_endpoint: expected an absolute http:// or https:// URL, "
        'got "https://h:99999"',
    ),
    ("[upstream]\ntimeout = 1\n", f"{SRC}: upstream.timeout: unknown key"),
    (
        "[upstream]\ntimeout_seconds = 0\n",
        f"{SRC}: upstream.timeout_seconds: expected a number of seconds > 0, got 0",
    ),
    (
        "[upstream]\ntimeout_seconds = inf\n",
        f"{SRC}: upstream.timeout_seconds: expected a number of seconds > 0, got inf",
    ),
    (
        "[upstream]\ntimeout_seconds = nan\n",
        f"{SRC}: upstream.timeout_seconds: expected a number of seconds > 0, got nan",
    ),
    (
        "[upstream]\ntimeout_seconds = false\n",
        f"{SRC}: upstream.timeout_seconds: expected a number of seconds > 0, got false",
    ),
    (
        "[upstream]\nvalidation = 'yes'\n",
        f'{SRC}: upstream.validation: expected true or false, got "yes"',
    ),
    ("hubs = []\n", f"{SRC}: hubs: expected a table, got an array"),
    ("hubs.chat = 3\n", f"{SRC}: hubs.chat: expected a table, got 3"),
    ("[hubs.chat]\nanonymus_connect = true\n", f"{SRC}: hubs.chat.anonymus_connect: unknown key"),
    (
        "[hubs.chat]\nanonymous_connect = 1\n",
        f"{SRC}: hubs.chat.anonymous_connect: expected true or false, got 1",
    ),
    (
        "[hubs.chat]\nkeepalive_seconds = 0\n",
        f"{SRC}: hubs.chat.keepalive_seconds: expected an integer 1..120, got 0",
    ),
    (
        "[hubs.chat]\nkeepalive_seconds = 121\n",
        f"{SRC}: hubs.chat.keepalive_seconds: expected an integer 1..120, got 121",
    ),
    (
        "[hubs.chat]\nmax_groups_per_connection = 0\n",
        f"{SRC}: hubs.chat.max_groups_per_connection: expected an integer 1..1000000, got 0",
    ),
    (
        "[hubs.chat]\nclient_messages_per_second = 0\n",
        f"{SRC}: hubs.chat.client_messages_per_second: expected an integer >= 1, got 0",
    ),
    (
        "[hubs.chat]\nclient_bytes_per_second = 1.5\n",
        f"{SRC}: hubs.chat.client_bytes_per_second: expected an integer >= 1, got 1.5",
    ),
    (
        "[hubs.1chat]\n",
        f"{SRC}: hubs.1chat: invalid hub name (a letter, then up to 127 letters, digits or "
        "_`,.[] characters; or _default)",
    ),
    (
        "[hubs.'a b']\n",
        f'{SRC}: hubs."a b": invalid hub name (a letter, then up to 127 letters, digits or '
        "_`,.[] characters; or _default)",
    ),
    (
        f"[hubs.{'x' * 129}]\n",
        f"{SRC}: hubs.{'x' * 129}: invalid hub name (a letter, then up to 127 letters, digits or "
        "_`,.[] characters; or _default)",
    ),
    (
        "[hubs.chat]\n[hubs.CHAT]\n",
        f'{SRC}: hubs.CHAT: same hub as "chat" (hub names are case-insensitive)',
    ),
    (
        "[hubs.'a.b']\nkeepalive_seconds = 0\n",
        f'{SRC}: hubs."a.b".keepalive_seconds: expected an integer 1..120, got 0',
    ),
    (
        "[hubs.chat]\nevent_handlers = 'x'\n",
        f'{SRC}: hubs.chat.event_handlers: expected an array of tables, got "x"',
    ),
    ("[hubs.chat]\nevent_handlers = [1]\n", f"{HP}: expected a table, got 1"),
    (H, f"{HP}.url_template: required"),
    (H + U + "auth = 'None'\n", f"{HP}.auth: unknown key"),
    (H + "url_template = 5\n", f"{HP}.url_template: expected a string, got 5"),
    (
        H + "url_template = '/eventhandler'\n",
        f'{HP}.url_template: expected an absolute http:// or https:// URL, got "/eventhandler"',
    ),
    (
        H + "url_template = 'ws://localhost/x'\n",
        f'{HP}.url_template: expected an absolute http:// or https:// URL, got "ws://localhost/x"',
    ),
    (
        H + "url_template = 'http://localhost/a b'\n",
        f'{HP}.url_template: must not contain whitespace, got "http://localhost/a b"',
    ),
    (
        H + "url_template = 'http://{hub}.example.com/x'\n",
        f"{HP}.url_template: placeholders are not allowed in the host part",
    ),
    (
        H + "url_template = 'http://example.com:{event}/x'\n",
        f"{HP}.url_template: placeholders are not allowed in the host part",
    ),
    (
        H + "url_template = 'http://example.com/{user}'\n",
        f"{HP}.url_template: unknown placeholder {{user}} (only {{hub}} and {{event}})",
    ),
    (
        H + "url_template = 'http://example.com/{Hub}'\n",
        f"{HP}.url_template: unknown placeholder {{Hub}} (only {{hub}} and {{event}})",
    ),
    (H + "url_template = 'http://example.com/{hub'\n", f"{HP}.url_template: unbalanced {{ or }}"),
    (H + U + "user_event_pattern = 1\n", f"{HP}.user_event_pattern: expected a string, got 1"),
    (
        H + U + "user_event_pattern = 'a,,b'\n",
        f"{HP}.user_event_pattern: invalid event name '' (a letter, then up to 127 letters, "
        "digits or _.- characters; or *)",
    ),
    (
        H + U + "user_event_pattern = 'msg, 9lives'\n",
        f"{HP}.user_event_pattern: invalid event name '9lives' (a letter, then up to 127 "
        "letters, digits or _.- characters; or *)",
    ),
    (
        H + U + "system_events = 'connect'\n",
        f'{HP}.system_events: expected an array of strings, got "connect"',
    ),
    (
        H + U + "system_events = ['conect']\n",
        f"{HP}.system_events: unknown event 'conect' (expected connect, connected, disconnected)",
    ),
    (
        H + U + "system_events = ['Connect']\n",
        f"{HP}.system_events: unknown event 'Connect' (expected connect, connected, disconnected)",
    ),
    (
        H + U + "system_events = ['connect', 'connect']\n",
        f"{HP}.system_events: duplicate event 'connect'",
    ),
    (H + U + "system_events = [1]\n", f"{HP}.system_events[0]: expected a string, got 1"),
    (
        H + U + "group_presence_events = ['joined']\n",
        f"{HP}.group_presence_events: expected a table, got an array",
    ),
    (
        H + U + "group_presence_events = { event_names = 'joined' }\n",
        f'{HP}.group_presence_events.event_names: expected an array of strings, got "joined"',
    ),
    (
        H + U + "group_presence_events = { event_names = ['join'] }\n",
        f"{HP}.group_presence_events.event_names: unknown event 'join' (expected joined, left)",
    ),
    (
        H + U + "group_presence_events = { event_names = ['left', 'left'] }\n",
        f"{HP}.group_presence_events.event_names: duplicate event 'left'",
    ),
    (
        H + U + "group_presence_events = { group_filters = ['a', ''] }\n",
        f"{HP}.group_presence_events.group_filters[1]: expected 1 to 1024 characters, got 0",
    ),
    (
        H + U + "group_presence_events = { group_filters = [1] }\n",
        f"{HP}.group_presence_events.group_filters[0]: expected a string, got 1",
    ),
    (
        H + U + "group_presence_events = { event_names = [], groups = [] }\n",
        f"{HP}.group_presence_events.groups: unknown key",
    ),
    (
        H + U + f"group_presence_events = {{ group_filters = {[str(i) for i in range(101)]} }}\n",
        f"{HP}.group_presence_events.group_filters: 101 filters, at most 100",
    ),
    (
        H + U + "timeout_seconds = -1.5\n",
        f"{HP}.timeout_seconds: expected a number of seconds > 0, got -1.5",
    ),
]


@pytest.mark.parametrize(("text", "problem"), CASES)
def test_each_rule_reports_its_key_path(in_tmp: Path, text: str, problem: str) -> None:
    assert problems(in_tmp, text) == [problem]


def test_all_problems_are_reported_at_once(in_tmp: Path) -> None:
    found = problems(
        in_tmp,
        """
bogus = 1
[server]
port = "80a"
[upstream]
validation = 0
[hubs.chat]
anonymus_connect = true
[[hubs.chat.event_handlers]]
url_template = "http://localhost/{x}"
system_events = ["conect"]
[[hubs.chat.event_handlers]]
timeout_seconds = 0
""",
    )
    assert found == [
        f"{SRC}: bogus: unknown key",
        f'{SRC}: server.port: expected an integer 0..65535, got "80a"',
        f"{SRC}: upstream.validation: expected true or false, got 0",
        f"{SRC}: hubs.chat.anonymus_connect: unknown key",
        f"{HP}.url_template: unknown placeholder {{x}} (only {{hub}} and {{event}})",
        f"{HP}.system_events: unknown event 'conect' (expected connect, connected, disconnected)",
        f"{SRC}: hubs.chat.event_handlers[1].url_template: required",
        f"{SRC}: hubs.chat.event_handlers[1].timeout_seconds: expected a number of seconds > 0, "
        "got 0",
    ]


def test_config_error_message_joins_the_problems(in_tmp: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(in_tmp, "a = 1\nb = 2\n")
    assert str(info.value) == f"{SRC}: a: unknown key; {SRC}: b: unknown key"
    assert info.value.code == "Error.InvalidConfiguration"


def test_access_key_values_never_appear_in_problems(in_tmp: Path) -> None:
    secrets = ["s3cr3t-short", "s3cr3t s3cr3t s3cr3t", "s3cr3t-long-enough-key-0123456789abc"]
    text = "[server]\naccess_keys = [" + ", ".join(f"'{s}'" for s in [*secrets, secrets[2]]) + "]\n"
    found = problems(in_tmp, text)
    assert len(found) == 3
    assert not any("s3cr3t" in p for p in found)


def test_unknown_key_names_are_quoted_when_not_bare(in_tmp: Path) -> None:
    assert problems(in_tmp, '[server]\n"a.b c" = 1\n') == [f'{SRC}: server."a.b c": unknown key']


# --- reading the file ------------------------------------------------------------------------


def test_toml_syntax_error_is_one_problem_with_line_and_column(in_tmp: Path) -> None:
    found = problems(in_tmp, "[server]\nport = = 3\n")
    assert len(found) == 1
    assert found[0].startswith(f"{SRC}: invalid TOML: ")
    assert "line 2, column 8" in found[0]


def test_missing_file(in_tmp: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("absent.toml")
    assert info.value.problems == ["absent.toml: cannot read file: No such file or directory"]


def test_directory_instead_of_file(in_tmp: Path) -> None:
    (in_tmp / "d.toml").mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(in_tmp / "d.toml")
    (problem,) = info.value.problems
    assert problem.startswith(f"{in_tmp / 'd.toml'}: cannot read file: ")


def test_file_that_is_not_utf8(in_tmp: Path) -> None:
    (in_tmp / SRC).write_bytes(b'[server]\nhost = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(SRC)
    assert info.value.problems == [f"{SRC}: invalid TOML: not UTF-8 text"]


def test_parse_config_default_source_and_non_table_root() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"server": {"port": None}})
    assert info.value.problems == [
        "<config>: server.port: expected an integer 0..65535, got no value"
    ]
    with pytest.raises(ConfigError) as info:
        parse_config([], source="x")  # type: ignore[arg-type]
    assert info.value.problems == ["x: expected a table, got an array"]


# --- ServiceConfig -----------------------------------------------------------------------------


def test_hub_lookup_is_case_insensitive(in_tmp: Path) -> None:
    cfg = load(in_tmp, "[hubs.Chat]\nanonymous_connect = true\n")
    for name in ("chat", "CHAT", "Chat"):
        assert cfg.hub(name) is cfg.hubs["chat"]
    assert cfg.hub("chat").name == "Chat"


def test_hub_lookup_falls_back_to_default_renamed(in_tmp: Path) -> None:
    cfg = load(
        in_tmp,
        '[hubs._default]\nkeepalive_seconds = 7\n[[hubs._default.event_handlers]]\nurl_template = "http://a/{hub}"\n[hubs.chat]\n',
    )
    other = cfg.hub("Other")
    assert other.name == "Other"
    assert other.keepalive_seconds == 7
    assert other.event_handlers == cfg.hubs["_default"].event_handlers
    assert cfg.hub("chat") == HubSettings(name="chat")  # a listed hub does not inherit _default


def test_hub_lookup_without_default() -> None:
    cfg = default_config()
    assert cfg.hub("Any") == HubSettings(name="Any")
    assert cfg.hub("Any").anonymous_connect is False
    assert cfg.hub("Any").event_handlers == ()


def test_hubs_mapping_is_immutable_and_copied() -> None:
    source = {"chat": HubSettings(name="chat")}
    cfg = ServiceConfig(hubs=source)
    source["other"] = HubSettings(name="other")
    assert list(cfg.hubs) == ["chat"]
    with pytest.raises(TypeError):
        cfg.hubs["x"] = HubSettings(name="x")  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server = ServerSettings()  # type: ignore[misc]


def test_with_overrides_replaces_only_given_values(in_tmp: Path) -> None:
    cfg = load(in_tmp, f"[server]\nport = 9000\naccess_keys = ['{KEY_A}']\n[hubs.chat]\n")
    same = cfg.with_overrides()
    assert same == cfg
    new = cfg.with_overrides(
        host="0.0.0.0",
        port=0,
        access_keys=f"{KEY_B}, {KEY_A},{KEY_B}",
        public_endpoint="http://localhost:8080/",
    )
    assert new.server == ServerSettings(
        host="0.0.0.0",
        port=0,
        access_keys=(KEY_B, KEY_A),
        public_endpoint="http://localhost:8080",
    )
    assert new.hubs == cfg.hubs
    assert new.upstream == cfg.upstream
    assert cfg.server.port == 9000  # the original is untouched
    assert cfg.with_overrides(access_keys=[KEY_B]).server.access_keys == (KEY_B,)
    assert cfg.with_overrides(access_keys="").server.access_keys == (KEY_A,)
    assert cfg.with_overrides(access_keys=[" ", ","]).server.access_keys == (KEY_A,)


def test_with_overrides_validates_everything_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        default_config().with_overrides(
            host="",
            port=70000,
            access_keys="tooshort",
            public_endpoint="example.com",
            source="command line",
        )
    assert info.value.problems == [
        'command line: server.host: expected a host name or address, got ""',
        "command line: server.port: expected an integer 0..65535, got 70000",
        "command line: server.access_keys[0]: too short (8 characters, need at least 32)",
        "command line: server.public_endpoint: expected an absolute http:// or https:// URL, "
        'got "example.com"',
    ]
    with pytest.raises(ConfigError) as info:
        default_config().with_overrides(port=True)
    assert info.value.problems == [
        "<overrides>: server.port: expected an integer 0..65535, got true"
    ]


@pytest.mark.parametrize(
    ("value", "keys"),
    [
        ("", ()),
        ("k1", ("k1",)),
        (" k1 , k2,,k1 ", ("k1", "k2")),
        (["k2", "k1,k3", " ", "k2"], ("k2", "k1", "k3")),
        ((), ()),
    ],
)
def test_parse_access_keys(value: str | list[str], keys: tuple[str, ...]) -> None:
    assert parse_access_keys(value) == keys


# --- arbitrary input ---------------------------------------------------------------------------

_KEYS = st.sampled_from(
    [
        "server",
        "upstream",
        "hubs",
        "chat",
        "Chat",
        "_default",
        "host",
        "port",
        "access_keys",
        "public_endpoint",
        "max_message_bytes",
        "outbox_max_bytes",
        "timeout_seconds",
        "validation",
        "anonymous_connect",
        "keepalive_seconds",
        "event_handlers",
        "url_template",
        "user_event_pattern",
        "system_events",
        "group_presence_events",
        "event_names",
        "group_filters",
    ]
) | st.text(max_size=8)
_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(
        [
            "http://localhost:5000/{hub}/{event}",
            "http://[::1",
            "https://h:99999",
            "http://{hub}/",
            "connect",
            "*",
            KEY_A,
        ]
    )
)
_JSON = st.recursive(
    _LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_KEYS, _JSON, max_size=4))
def test_arbitrary_input_gives_a_config_or_a_config_error(data: dict[str, object]) -> None:
    try:
        cfg = parse_config(data)
    except ConfigError as exc:
        assert exc.problems
        assert all(p.startswith("<config>: ") and "\n" not in p for p in exc.problems)
    else:
        assert isinstance(cfg, ServiceConfig)


def test_problems_never_echo_url_secrets(tmp_path: Path) -> None:
    """User info and query strings (``?code=``) of bad URLs stay out of the report."""
    path = tmp_path / "webpubsub.toml"
    path.write_text(
        "[server]\npublic_endpoint = 'https://admin:hunter2@h/x'\n"
        "[hubs.chat]\n[[hubs.chat.event_handlers]]\n"
        "url_template = 'ftp://app/eh?code=s3cret'\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = "\n".join(info.value.problems)
    assert "hunter2" not in text and "s3cret" not in text
    assert "server.public_endpoint" in text and "url_template" in text


def test_with_overrides_keeps_every_setting_it_is_not_given(in_tmp: Path) -> None:
    # Each non-default server setting must survive an override of another one.
    cfg = load(
        in_tmp,
        "[server]\nmax_message_bytes = 2048\noutbox_max_bytes = 70000\n"
        "recovery_window_seconds = 5\ntls_cert = 'c.pem'\ntls_key = 'k.pem'\n"
        "trusted_proxies = ['10.0.0.0/8']\n",
    )
    new = cfg.with_overrides(port=1234)
    assert new.server == dataclasses.replace(cfg.server, port=1234)
    assert new.server.tls and new.server.trusted_proxies == ("10.0.0.0/8",)


def test_tls_settings_come_in_pairs(in_tmp: Path) -> None:
    cfg = load(in_tmp, "[server]\ntls_cert = 'c.pem'\ntls_key = 'k.pem'\n")
    assert (cfg.server.tls_cert, cfg.server.tls_key, cfg.server.tls) == ("c.pem", "k.pem", True)
    assert not default_config().server.tls
    with pytest.raises(ConfigError) as info:
        load(in_tmp, "[server]\ntls_cert = 'c.pem'\n")
    assert info.value.problems == [f"{SRC}: server.tls_key: required with server.tls_cert"]
    with pytest.raises(ConfigError) as info:
        load(in_tmp, "[server]\ntls_cert = ''\ntls_key = 3\n")
    assert info.value.problems == [
        f"{SRC}: server.tls_cert: expected a file path, got an empty string",
        f"{SRC}: server.tls_key: expected a string, got 3",
    ]
    over = default_config().with_overrides(tls_cert="a.pem", tls_key="b.pem")
    assert (over.server.tls_cert, over.server.tls_key) == ("a.pem", "b.pem")
    with pytest.raises(ConfigError) as info:
        default_config().with_overrides(tls_key="b.pem", source="command line")
    assert info.value.problems == ["command line: server.tls_cert: required with server.tls_key"]


def test_trusted_proxies_are_addresses_networks_or_any(in_tmp: Path) -> None:
    cfg = load(in_tmp, "[server]\ntrusted_proxies = ['127.0.0.1', '10.0.0.0/8', '::1', '*']\n")
    assert cfg.server.trusted_proxies == ("127.0.0.1", "10.0.0.0/8", "::1", "*")
    with pytest.raises(ConfigError) as info:
        load(in_tmp, "[server]\ntrusted_proxies = ['proxy.local', 7]\n")
    assert info.value.problems == [
        f"{SRC}: server.trusted_proxies[0]: expected an IP address, a network like "
        '10.0.0.0/8, or *, got "proxy.local"',
        f"{SRC}: server.trusted_proxies[1]: expected a string, got 7",
    ]


def test_the_backplane_table(in_tmp: Path) -> None:
    cfg = load(
        in_tmp,
        "[backplane]\nredis_url = 'rediss://:secret@redis.internal:6380/2'\n"
        "node_id = 'node-1'\nkey_prefix = 'chat-prod'\n",
    )
    assert cfg.backplane.redis_url == "rediss://:secret@redis.internal:6380/2"
    assert (cfg.backplane.node_id, cfg.backplane.key_prefix) == ("node-1", "chat-prod")
    assert default_config().backplane.redis_url is None
    with pytest.raises(ConfigError) as info:
        load(
            in_tmp,
            "[backplane]\nredis_url = 'http://:secret@host'\nnode_id = 'a b'\nport = 1\n",
        )
    assert info.value.problems == [
        f"{SRC}: backplane.port: unknown key",
        f'{SRC}: backplane.redis_url: expected a redis:// or rediss:// URL, got "http://***@host"',
        f'{SRC}: backplane.node_id: expected 1 to 64 letters, digits or _.- characters, got "a b"',
    ]
    assert all("secret" not in problem for problem in info.value.problems)
    over = cfg.with_overrides(redis_url="redis://127.0.0.1:7000/0", node_id="n2")
    assert over.backplane == dataclasses.replace(
        cfg.backplane, redis_url="redis://127.0.0.1:7000/0", node_id="n2"
    )
