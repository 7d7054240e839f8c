"""The service configuration: a TOML file validated into frozen dataclasses.

Every key is optional. Validation never stops at the first finding: all
problems are collected and raised together as one :class:`ConfigError`, each as
a single line ``"{source}: {dotted.key}: {reason}"``. Access-key values never
appear in a problem.

This module reads no environment variables: the CLI passes env values and flags
to :meth:`ServiceConfig.with_overrides` (flags > env > file).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import SplitResult, urlsplit

from webpubsub.core.settings import (
    GROUP_PRESENCE_EVENTS,
    SYSTEM_EVENTS,
    EventHandlerSettings,
    GroupPresenceEvents,
    HubSettings,
)
from webpubsub.errors import ConfigError
from webpubsub.protocol.names import EVENT_NAME_PATTERN, HUB_PATTERN
from webpubsub.protocol.urls import redacted as _redacted

DEFAULT_HUB = "_default"
MIN_ACCESS_KEY_LENGTH = 32
"""Azure docs: REST authentication: HMAC keys under 32 bytes are weak (PyJWT warns about them)."""

_HUB_NAME = HUB_PATTERN
_EVENT_NAME = EVENT_NAME_PATTERN
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_NODE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_TEMPLATE_PLACEHOLDERS = ("hub", "event")
MAX_GROUP_FILTERS = 100
"""Group filters of one handler's ``group_presence_events``, at most."""
MAX_GROUP_FILTER_CHARS = 1024
"""Characters of one group filter, at most (Azure's group names are shorter)."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The ``[server]`` table (its keys in the order docs/reference/config.md lists them)."""

    host: str = "127.0.0.1"
    port: int = 8080
    access_keys: tuple[str, ...] = ()
    public_endpoint: str | None = None
    tls_cert: str | None = None
    """PEM certificate chain: with ``tls_key``, the port serves ``https://`` and ``wss://``."""
    tls_key: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    """Peers (addresses or networks, or ``*``) whose ``X-Forwarded-Proto``/``-Host`` count."""
    max_message_bytes: int = 1_048_576
    outbox_max_bytes: int = 4_194_304
    recovery_window_seconds: float = 60.0
    """How long a dropped reliable connection is kept for its client to recover it."""
    data_dir: str | None = None
    """Where the event queue lives (None: the user data directory; ``:memory:``: nowhere)."""
    shutdown_timeout_seconds: float = 10.0
    """How long shutdown flushes queued ``connected``/``disconnected`` events."""
    header_timeout_seconds: float = 10.0
    """How long a connection may wait for its first request head, and a REST body for the
    rest of its request."""
    keepalive_timeout_seconds: float = 75.0
    """How long a keep-alive connection may wait for its next request after an answer."""
    max_pending_handshakes: int = 1000
    """WebSocket handshakes being admitted at once (token check, ``connect`` handler)."""
    reliable_max_bytes: int = 16_777_216
    """A reliable connection's budget: its unacknowledged messages and what its
    transport still holds of them, together."""
    detached_max_bytes: int = 268_435_456
    """What all detached reliable connections may hold together (the oldest end first)."""
    detached_user_max_bytes: int = 67_108_864
    """What the detached reliable connections of one user may hold together."""
    log_format: str = "text"
    """``text`` (one line per event, for a terminal) or ``json`` (one JSON object per
    line, with the hub, connection id and user id as fields)."""

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


@dataclass(frozen=True, slots=True)
class BackplaneSettings:
    """The ``[backplane]`` table: how this node joins the others (none: one process)."""

    redis_url: str | None = None
    """``redis://[:password@]host:port/db`` or ``rediss://`` (TLS): scale out over Redis."""
    node_id: str | None = None
    """This node's id (generated when absent); shown in the log and ``/api/health``."""
    key_prefix: str = "webpubsub"
    """The prefix of every Redis key and channel: services sharing a Redis differ here."""
    heartbeat_timeout_seconds: float = 10.0
    """How long after its last heartbeat a node counts as dead (its clients then leave
    every answer and a survivor sends their ``disconnected`` events)."""


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """The ``[upstream]`` table: defaults for calls to event handlers."""

    timeout_seconds: float = 20.0
    validation: bool = True
    max_connections_per_origin: int = 100
    """HTTP connections to one handler origin for events (user and asynchronous)."""
    connect_connections_per_origin: int = 100
    """A separate budget for ``connect`` calls and abuse-protection probes."""
    max_inflight_events_per_connection: int = 16
    """User events one client connection may have waiting on handlers at once."""
    retry_delays_seconds: tuple[float, ...] = (1.0, 3.0, 5.0)
    """The first retries of an asynchronous event (Azure's schedule), then doubling."""
    retry_max_delay_seconds: float = 300.0
    retry_horizon_seconds: float = 86400.0
    """How long an asynchronous event is retried before it goes to the dead letters."""
    max_queued_events: int = 100_000
    max_dead_events: int = 100_000


@dataclass(frozen=True, slots=True)
class PortalSettings:
    """The ``[portal]`` table: the operator's web portal at ``/portal``."""

    enabled: bool = True
    """Serve the portal and its API (closed without an access key either way)."""
    trace_buffer: int = 1000
    """How many trace events the live trace keeps in memory (0: no trace)."""
    trace_max_bytes: int = 32 * 1024 * 1024
    """The live trace's records, serialized, at most (the oldest go first)."""


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """The ``[metrics]`` table: ``/metrics`` in the Prometheus text format."""

    enabled: bool = True
    token: str | None = None
    """A bearer token ``/metrics`` requires (None: open, like ``/api/health``)."""


LOG_FORMATS = ("text", "json")


def _no_hubs() -> Mapping[str, HubSettings]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """The whole validated configuration. ``hubs`` is keyed by lower-cased hub name."""

    server: ServerSettings = field(default_factory=ServerSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    backplane: BackplaneSettings = field(default_factory=BackplaneSettings)
    portal: PortalSettings = field(default_factory=PortalSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    hubs: Mapping[str, HubSettings] = field(default_factory=_no_hubs)

    def __post_init__(self) -> None:
        # Copy into a read-only view so a caller's dict cannot change us later.
        object.__setattr__(self, "hubs", MappingProxyType(dict(self.hubs)))

    def hub(self, name: str) -> HubSettings:
        """Settings of hub ``name`` (case-insensitive), else ``_default`` renamed, else defaults."""
        found = self.hubs.get(name.lower())
        if found is not None:
            return found
        default = self.hubs.get(DEFAULT_HUB)
        if default is not None:
            return dataclasses.replace(default, name=name)
        return HubSettings(name=name)

    def with_overrides(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        access_keys: str | Sequence[str] | None = None,
        public_endpoint: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        redis_url: str | None = None,
        node_id: str | None = None,
        log_format: str | None = None,
        source: str = "<overrides>",
    ) -> ServiceConfig:
        """A copy with the given server settings replaced (``None`` keeps the current value).

        ``access_keys`` goes through :func:`parse_access_keys`; if that leaves no key the
        current keys are kept. Values are validated like the file's; problems are
        reported as ``{source}: server.{key}: {reason}``. Every other setting is kept.
        """
        check = _Checker(source)
        changes: dict[str, object] = {}
        if host is not None:
            changes["host"] = check.host(host, "server.host")
        if port is not None:
            changes["port"] = check.integer(port, "server.port", 0, 65535)
        keys = parse_access_keys(access_keys) if access_keys is not None else ()
        if keys:
            changes["access_keys"] = check.access_keys(keys, "server.access_keys")
        if public_endpoint is not None:
            changes["public_endpoint"] = check.endpoint(public_endpoint, "server.public_endpoint")
        if log_format is not None:
            changes["log_format"] = check.log_format(log_format, "server.log_format")
        if tls_cert is not None or tls_key is not None:
            changes["tls_cert"], changes["tls_key"] = check.tls_pair(
                {"tls_cert": tls_cert, "tls_key": tls_key}, "server"
            )
        plane: dict[str, object] = {}
        if redis_url is not None:
            plane["redis_url"] = check.redis_url(redis_url, "backplane.redis_url")
        if node_id is not None:
            plane["node_id"] = check.node_id(node_id, "backplane.node_id")
        check.raise_if_any()
        server = dataclasses.replace(self.server, **changes)  # type: ignore[arg-type]
        backplane = dataclasses.replace(self.backplane, **plane)  # type: ignore[arg-type]
        return dataclasses.replace(self, server=server, backplane=backplane)


SECTIONS: Mapping[str, type] = MappingProxyType(
    {
        "server": ServerSettings,
        "backplane": BackplaneSettings,
        "upstream": UpstreamSettings,
        "portal": PortalSettings,
        "metrics": MetricsSettings,
        "hubs.NAME": HubSettings,
        "hubs.NAME.event_handlers": EventHandlerSettings,
    }
)
"""Each table of the file and the dataclass that declares its keys (one field, one key)."""

_NOT_KEYS = frozenset({"name"})  # a hub's name is its table's name, not a key in it


def config_keys(cls: type) -> tuple[str, ...]:
    """The keys of a table: the fields of the dataclass that holds it, in order."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in _NOT_KEYS)


def default_config() -> ServiceConfig:
    """The configuration used when no file is given."""
    return ServiceConfig()


def parse_access_keys(value: str | Sequence[str]) -> tuple[str, ...]:
    """Keys from a flag or env value: comma-split, stripped, empties dropped, de-duplicated."""
    items = [value] if isinstance(value, str) else list(value)
    keys: dict[str, None] = {}
    for item in items:
        for part in item.split(","):
            key = part.strip()
            if key:
                keys.setdefault(key, None)
    return tuple(keys)


def load_config(path: str | os.PathLike[str]) -> ServiceConfig:
    """Read and validate a TOML config file; raises :class:`ConfigError` on any problem."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError([f"{source}: cannot read file: {reason}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: invalid TOML: {exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: invalid TOML: not UTF-8 text"]) from exc
    return parse_config(data, source=source)


def parse_config(data: Mapping[str, object], *, source: str = "<config>") -> ServiceConfig:
    """Validate a parsed TOML document; raises :class:`ConfigError` listing every problem."""
    check = _Checker(source)
    root = check.table(data, "", config_keys(ServiceConfig))
    server = _parse_server(check, root.get("server"))
    upstream = _parse_upstream(check, root.get("upstream"))
    backplane = _parse_backplane(check, root.get("backplane"))
    portal = _parse_portal(check, root.get("portal"))
    metrics = _parse_metrics(check, root.get("metrics"))
    hubs = _parse_hubs(check, root.get("hubs"), upstream.timeout_seconds)
    check.raise_if_any()
    return ServiceConfig(
        server=server,
        upstream=upstream,
        backplane=backplane,
        portal=portal,
        metrics=metrics,
        hubs=hubs,
    )


def _parse_portal(check: _Checker, value: object) -> PortalSettings:
    d = PortalSettings()
    t = check.table(value, "portal", config_keys(PortalSettings))
    return PortalSettings(
        enabled=check.boolean(t.get("enabled", d.enabled), "portal.enabled"),
        trace_buffer=check.integer(
            t.get("trace_buffer", d.trace_buffer), "portal.trace_buffer", 0, 1_000_000
        ),
        trace_max_bytes=check.integer(
            t.get("trace_max_bytes", d.trace_max_bytes),
            "portal.trace_max_bytes",
            1024 * 1024,
            16 * 1024 * 1024 * 1024,
        ),
    )


def _parse_metrics(check: _Checker, value: object) -> MetricsSettings:
    d = MetricsSettings()
    t = check.table(value, "metrics", config_keys(MetricsSettings))
    token = check.string(t["token"], "metrics.token") if "token" in t else None
    if token is not None and len(token) < 16:
        check.add("metrics.token", "expected at least 16 characters")
    return MetricsSettings(
        enabled=check.boolean(t.get("enabled", d.enabled), "metrics.enabled"), token=token
    )


def _parse_backplane(check: _Checker, value: object) -> BackplaneSettings:
    d = BackplaneSettings()
    t = check.table(value, "backplane", config_keys(BackplaneSettings))
    url = check.redis_url(t["redis_url"], "backplane.redis_url") if "redis_url" in t else None
    node = check.node_id(t["node_id"], "backplane.node_id") if "node_id" in t else None
    prefix = d.key_prefix
    if "key_prefix" in t:
        prefix = check.node_id(t["key_prefix"], "backplane.key_prefix") or d.key_prefix
    timeout = d.heartbeat_timeout_seconds
    if "heartbeat_timeout_seconds" in t:
        timeout = check.positive(
            t["heartbeat_timeout_seconds"], "backplane.heartbeat_timeout_seconds"
        )
        if timeout < 0.3 or timeout > 15:
            check.add(
                "backplane.heartbeat_timeout_seconds",
                f"expected 0.3 to 15 seconds, got {_describe(t['heartbeat_timeout_seconds'])}",
            )
    return BackplaneSettings(
        redis_url=url, node_id=node, key_prefix=prefix, heartbeat_timeout_seconds=timeout
    )


def _parse_server(check: _Checker, value: object) -> ServerSettings:
    d = ServerSettings()
    t = check.table(value, "server", config_keys(ServerSettings))
    host = check.host(t["host"], "server.host") if "host" in t else d.host
    port = check.integer(t.get("port", d.port), "server.port", 0, 65535)
    keys: tuple[str, ...] = d.access_keys
    if "access_keys" in t:
        keys = check.access_keys(t["access_keys"], "server.access_keys")
    endpoint = d.public_endpoint
    if "public_endpoint" in t:
        endpoint = check.endpoint(t["public_endpoint"], "server.public_endpoint")
    tls_cert, tls_key = check.tls_pair(t, "server")

    def size(key: str, lo: int) -> int:
        """A byte count of at least ``lo`` (the declared default when absent)."""
        return check.integer(t.get(key, getattr(d, key)), f"server.{key}", lo)

    return ServerSettings(
        host=host,
        port=port,
        access_keys=keys,
        public_endpoint=endpoint,
        max_message_bytes=size("max_message_bytes", 1024),
        outbox_max_bytes=size("outbox_max_bytes", 65536),
        recovery_window_seconds=check.positive(
            t.get("recovery_window_seconds", d.recovery_window_seconds),
            "server.recovery_window_seconds",
        ),
        data_dir=check.directory(t["data_dir"], "server.data_dir") if "data_dir" in t else None,
        shutdown_timeout_seconds=check.positive(
            t.get("shutdown_timeout_seconds", d.shutdown_timeout_seconds),
            "server.shutdown_timeout_seconds",
        ),
        reliable_max_bytes=size("reliable_max_bytes", 65536),
        detached_max_bytes=size("detached_max_bytes", 0),
        detached_user_max_bytes=size("detached_user_max_bytes", 0),
        tls_cert=tls_cert,
        tls_key=tls_key,
        trusted_proxies=check.networks(t.get("trusted_proxies", []), "server.trusted_proxies"),
        header_timeout_seconds=check.positive(
            t.get("header_timeout_seconds", d.header_timeout_seconds),
            "server.header_timeout_seconds",
        ),
        keepalive_timeout_seconds=check.positive(
            t.get("keepalive_timeout_seconds", d.keepalive_timeout_seconds),
            "server.keepalive_timeout_seconds",
        ),
        max_pending_handshakes=check.integer(
            t.get("max_pending_handshakes", d.max_pending_handshakes),
            "server.max_pending_handshakes",
            1,
        ),
        log_format=check.log_format(t.get("log_format", d.log_format), "server.log_format"),
    )


def _parse_upstream(check: _Checker, value: object) -> UpstreamSettings:
    d = UpstreamSettings()
    t = check.table(value, "upstream", config_keys(UpstreamSettings))

    def count(key: str) -> int:
        return check.integer(t.get(key, getattr(d, key)), f"upstream.{key}", 1)

    def seconds(key: str) -> float:
        return check.positive(t.get(key, getattr(d, key)), f"upstream.{key}")

    return UpstreamSettings(
        timeout_seconds=seconds("timeout_seconds"),
        validation=check.boolean(t.get("validation", d.validation), "upstream.validation"),
        max_connections_per_origin=count("max_connections_per_origin"),
        connect_connections_per_origin=count("connect_connections_per_origin"),
        max_inflight_events_per_connection=count("max_inflight_events_per_connection"),
        retry_delays_seconds=check.delays(
            t.get("retry_delays_seconds", list(d.retry_delays_seconds)),
            "upstream.retry_delays_seconds",
        ),
        retry_max_delay_seconds=seconds("retry_max_delay_seconds"),
        retry_horizon_seconds=seconds("retry_horizon_seconds"),
        max_queued_events=count("max_queued_events"),
        max_dead_events=count("max_dead_events"),
    )


def _parse_hubs(
    check: _Checker, value: object, default_timeout: float
) -> Mapping[str, HubSettings]:
    hubs: dict[str, HubSettings] = {}
    seen: dict[str, str] = {}
    for name, hub_value in check.table(value, "hubs", None).items():
        path = _join("hubs", name)
        if not (name.lower() == DEFAULT_HUB or _HUB_NAME.fullmatch(name)):
            check.add(
                path,
                "invalid hub name (a letter, then up to 127 letters, digits or _`,.[] "
                f"characters; or {DEFAULT_HUB})",
            )
            name = ""
        elif name.lower() in seen:
            check.add(
                path,
                f"same hub as {_quote(seen[name.lower()])} (hub names are case-insensitive)",
            )
            name = ""
        else:
            seen[name.lower()] = name
        hub = _parse_hub(check, hub_value, path, name, default_timeout)
        if name:
            hubs[name.lower()] = hub
    return hubs


def _parse_hub(
    check: _Checker, value: object, path: str, name: str, default_timeout: float
) -> HubSettings:
    d = HubSettings(name=name)
    t = check.table(value, path, config_keys(HubSettings))
    handlers: list[EventHandlerSettings] = []
    raw = t.get("event_handlers", [])
    hpath = f"{path}.event_handlers"
    if isinstance(raw, list | tuple):
        for i, item in enumerate(raw):
            handler = _parse_handler(check, item, f"{hpath}[{i}]", default_timeout)
            if handler is not None:
                handlers.append(handler)
    else:
        check.add(hpath, f"expected an array of tables, got {_describe(raw)}")
    return HubSettings(
        name=name,
        anonymous_connect=check.boolean(
            t.get("anonymous_connect", d.anonymous_connect), f"{path}.anonymous_connect"
        ),
        keepalive_seconds=check.integer(
            t.get("keepalive_seconds", d.keepalive_seconds), f"{path}.keepalive_seconds", 1, 120
        ),
        max_groups_per_connection=check.integer(
            t.get("max_groups_per_connection", d.max_groups_per_connection),
            f"{path}.max_groups_per_connection",
            1,
            1_000_000,
        ),
        client_messages_per_second=check.integer(
            t.get("client_messages_per_second", d.client_messages_per_second),
            f"{path}.client_messages_per_second",
            1,
        ),
        client_bytes_per_second=check.integer(
            t.get("client_bytes_per_second", d.client_bytes_per_second),
            f"{path}.client_bytes_per_second",
            1,
        ),
        event_handlers=tuple(handlers),
    )


def _parse_handler(
    check: _Checker, value: object, path: str, default_timeout: float
) -> EventHandlerSettings | None:
    if not isinstance(value, Mapping):
        check.add(path, f"expected a table, got {_describe(value)}")
        return None
    t = check.table(value, path, config_keys(EventHandlerSettings))
    if "url_template" in t:
        url = check.url_template(t["url_template"], f"{path}.url_template")
    else:
        check.add(f"{path}.url_template", "required")
        url = ""
    return EventHandlerSettings(
        url_template=url,
        user_event_pattern=check.pattern(
            t.get("user_event_pattern", ""), f"{path}.user_event_pattern"
        ),
        system_events=check.system_events(t.get("system_events", []), f"{path}.system_events"),
        timeout_seconds=check.positive(
            t.get("timeout_seconds", default_timeout), f"{path}.timeout_seconds"
        ),
        group_presence_events=check.group_presence(
            t.get("group_presence_events"), f"{path}.group_presence_events"
        ),
    )


class _Checker:
    """Collects problems for one source; each check returns a usable value even on failure."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def add(self, path: str, reason: str) -> None:
        self.problems.append(
            f"{self.source}: {path}: {reason}" if path else f"{self.source}: {reason}"
        )

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(list(self.problems))

    def table(self, value: object, path: str, allowed: tuple[str, ...] | None) -> dict[str, object]:
        """``value`` as a str-keyed dict (empty if absent or not a table); unknown keys reported."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.add(path, f"expected a table, got {_describe(value)}")
            return {}
        out: dict[str, object] = {}
        for key, item in value.items():
            name = key if isinstance(key, str) else str(key)
            if allowed is not None and name not in allowed:
                self.add(_join(path, name), "unknown key")
            else:
                out[name] = item
        return out

    def integer(self, value: object, path: str, lo: int, hi: int | None = None) -> int:
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value >= lo
            and (hi is None or value <= hi)
        ):
            return value
        wanted = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        self.add(path, f"expected an integer {wanted}, got {_describe(value)}")
        return lo

    def positive(self, value: object, path: str) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
            if math.isfinite(number) and number > 0:
                return number
        self.add(path, f"expected a number of seconds > 0, got {_describe(value)}")
        return 1.0

    def log_format(self, value: object, path: str) -> str:
        if value in LOG_FORMATS:
            return str(value)
        self.add(path, f"expected one of {', '.join(LOG_FORMATS)}, got {_describe(value)}")
        return LOG_FORMATS[0]

    def boolean(self, value: object, path: str) -> bool:
        if isinstance(value, bool):
            return value
        self.add(path, f"expected true or false, got {_describe(value)}")
        return False

    def string(self, value: object, path: str) -> str | None:
        if isinstance(value, str):
            return value
        self.add(path, f"expected a string, got {_describe(value)}")
        return None

    def tls_pair(self, t: Mapping[str, object], path: str) -> tuple[str | None, str | None]:
        """``tls_cert`` and ``tls_key`` of table ``t``: both file paths, or neither."""
        cert, key = t.get("tls_cert"), t.get("tls_key")
        if cert is None and key is None:
            return None, None
        values: list[str | None] = []
        for name, other, value in (("tls_cert", "tls_key", cert), ("tls_key", "tls_cert", key)):
            text = None if value is None else self.string(value, f"{path}.{name}")
            if value is None:
                self.add(f"{path}.{name}", f"required with {path}.{other}")
            elif text is not None and not text.strip():
                self.add(f"{path}.{name}", "expected a file path, got an empty string")
                text = None
            values.append(text)
        if None in values:
            return None, None
        return values[0], values[1]

    def redis_url(self, value: object, path: str) -> str | None:
        """``redis://`` or ``rediss://`` with a host, or ``unix://`` with a path."""
        text = self.string(value, path)
        if text is None:
            return None
        try:
            parts = urlsplit(text)
            _ = parts.port
        except ValueError:
            parts = None
        if (
            parts is None
            or parts.scheme not in ("redis", "rediss", "unix")
            or any(c.isspace() for c in text)
        ):
            self.add(
                path, f"expected a redis:// or rediss:// URL, got {_describe(_redacted(text))}"
            )
            return None
        if parts.scheme != "unix" and not parts.hostname:
            self.add(path, f"the URL has no host, got {_describe(_redacted(text))}")
            return None
        return text

    def node_id(self, value: object, path: str) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        if not _NODE_ID.fullmatch(text):
            self.add(
                path, f"expected 1 to 64 letters, digits or _.- characters, got {_describe(text)}"
            )
            return None
        return text

    def directory(self, value: object, path: str) -> str | None:
        """A directory path (created at start if missing), or ``:memory:``."""
        text = self.string(value, path)
        if text is not None and not text.strip():
            self.add(path, "expected a directory path or :memory:, got an empty string")
            return None
        return text

    def delays(self, value: object, path: str) -> tuple[float, ...]:
        """A non-empty array of at most 16 numbers of seconds >= 0."""
        if not isinstance(value, list | tuple) or not 1 <= len(value) <= 16:
            self.add(path, f"expected an array of 1 to 16 numbers, got {_describe(value)}")
            return (1.0,)
        out: list[float] = []
        for i, item in enumerate(value):
            if (
                isinstance(item, int | float)
                and not isinstance(item, bool)
                and math.isfinite(item)
                and item >= 0
            ):
                out.append(float(item))
            else:
                reason = f"expected a number of seconds >= 0, got {_describe(item)}"
                self.add(f"{path}[{i}]", reason)
        return tuple(out) or (1.0,)

    def networks(self, value: object, path: str) -> tuple[str, ...]:
        """Addresses or networks (``10.0.0.0/8``), or ``"*"`` for any peer."""
        if not isinstance(value, list | tuple):
            self.add(path, f"expected an array of strings, got {_describe(value)}")
            return ()
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.add(f"{path}[{i}]", f"expected a string, got {_describe(item)}")
                continue
            if item != "*":
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    self.add(
                        f"{path}[{i}]",
                        f"expected an IP address, a network like 10.0.0.0/8, or *, "
                        f"got {_describe(item)}",
                    )
                    continue
            out.append(item)
        return tuple(out)

    def host(self, value: object, path: str) -> str:
        text = self.string(value, path)
        if text is None:
            return ServerSettings().host
        if not text or any(c.isspace() for c in text):
            self.add(path, f"expected a host name or address, got {_describe(text)}")
        return text

    def access_keys(self, value: object, path: str) -> tuple[str, ...]:
        if isinstance(value, str):
            items: list[object] = [p.strip() for p in value.split(",")]
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            # Only the type: an access key value never appears in a problem.
            self.add(path, f"expected an array of strings, got {_kind(value)}")
            return ()
        keys: list[str] = []
        for i, key in enumerate(items):
            kpath = f"{path}[{i}]"
            if not isinstance(key, str):
                self.add(kpath, f"expected a string, got {_kind(key)}")
            elif any(c.isspace() or c == "," for c in key):
                self.add(kpath, "must not contain whitespace or commas")
            elif len(key) < MIN_ACCESS_KEY_LENGTH:
                self.add(
                    kpath,
                    f"too short ({len(key)} characters, need at least {MIN_ACCESS_KEY_LENGTH})",
                )
            elif key in keys:
                self.add(kpath, f"same key as {path}[{items.index(key)}]")
            else:
                keys.append(key)
        return tuple(keys)

    def endpoint(self, value: object, path: str) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        parts = self._http_url(text, path)
        if parts is None:
            return None
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            self.add(path, f"must be scheme://host[:port] only, got {_describe(_redacted(text))}")
            return None
        return f"{parts.scheme.lower()}://{parts.netloc}"

    def url_template(self, value: object, path: str) -> str:
        text = self.string(value, path)
        if text is None:
            return ""
        bad = sorted({p for p in _PLACEHOLDER.findall(text) if p not in _TEMPLATE_PLACEHOLDERS})
        for name in bad:
            self.add(path, f"unknown placeholder {{{name}}} (only {{hub}} and {{event}})")
        rest = _PLACEHOLDER.sub("", text)
        if "{" in rest or "}" in rest:
            self.add(path, "unbalanced { or }")
        try:
            netloc = urlsplit(text).netloc
        except ValueError:
            netloc = ""
        if "{" in netloc or "}" in netloc:
            self.add(path, "placeholders are not allowed in the host part")
        else:
            sample = _PLACEHOLDER.sub("x", text).replace("{", "").replace("}", "")
            self._http_url(sample, path, shown=text)
        return text

    def _http_url(self, text: str, path: str, shown: str | None = None) -> SplitResult | None:
        """Check ``text`` is an absolute http(s) URL with a host; report and return None if not."""
        reason = ""
        parts: SplitResult | None = None
        if any(c.isspace() for c in text):
            reason = "must not contain whitespace"
        else:
            try:
                parts = urlsplit(text)
                _ = parts.port  # raises ValueError on a bad port
            except ValueError:
                parts = None
            if parts is None or parts.scheme.lower() not in ("http", "https"):
                reason = "expected an absolute http:// or https:// URL"
            elif not parts.hostname:
                reason = "the URL has no host"
            elif parts.username is not None or parts.password is not None:
                reason = "the URL must not contain user info"
        if reason:
            self.add(
                path, f"{reason}, got {_describe(_redacted(text if shown is None else shown))}"
            )
            return None
        return parts

    def pattern(self, value: object, path: str) -> str:
        text = self.string(value, path)
        if text is None or not text.strip():
            return ""
        items = [p.strip() for p in text.split(",")]
        for item in items:
            if item != "*" and not _EVENT_NAME.fullmatch(item):
                self.add(
                    path,
                    f"invalid event name {_single(item)} (a letter, then up to 127 letters, "
                    "digits or _.- characters; or *)",
                )
        return ",".join(items)

    def system_events(self, value: object, path: str) -> frozenset[str]:
        return self._event_names(value, path, SYSTEM_EVENTS)

    def _event_names(self, value: object, path: str, known: frozenset[str]) -> frozenset[str]:
        events: set[str] = set()
        for item in self._strings(value, path):
            if item is None:
                continue
            if item not in known:
                expected = ", ".join(sorted(known))
                self.add(path, f"unknown event {_single(item)} (expected {expected})")
            elif item in events:
                self.add(path, f"duplicate event {_single(item)}")
            else:
                events.add(item)
        return frozenset(events)

    def _strings(self, value: object, path: str) -> list[str | None]:
        """Each item of an array of strings (None for an item that is not one, reported)."""
        if not isinstance(value, list | tuple):
            self.add(path, f"expected an array of strings, got {_describe(value)}")
            return []
        out: list[str | None] = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append(item)
            else:
                self.add(f"{path}[{i}]", f"expected a string, got {_describe(item)}")
                out.append(None)
        return out

    def group_presence(self, value: object, path: str) -> GroupPresenceEvents | None:
        """``{ event_names = [...], group_filters = [...] }``; absent: no presence events."""
        if value is None:
            return None
        t = self.table(value, path, config_keys(GroupPresenceEvents))
        names = self._event_names(
            t.get("event_names", []), f"{path}.event_names", GROUP_PRESENCE_EVENTS
        )
        fpath = f"{path}.group_filters"
        filters = self._strings(t.get("group_filters", []), fpath)
        if len(filters) > MAX_GROUP_FILTERS:
            self.add(fpath, f"{len(filters)} filters, at most {MAX_GROUP_FILTERS}")
        kept: list[str] = []
        for i, item in enumerate(filters):
            if item is None:
                continue
            if not item or len(item) > MAX_GROUP_FILTER_CHARS:
                self.add(
                    f"{fpath}[{i}]",
                    f"expected 1 to {MAX_GROUP_FILTER_CHARS} characters, got {len(item)}",
                )
            elif item not in kept:
                kept.append(item)
        return GroupPresenceEvents(event_names=names, group_filters=tuple(kept))


def _join(parent: str, key: str) -> str:
    """The dotted path of ``key`` under ``parent``, quoting keys that are not bare TOML keys."""
    part = key if _BARE_KEY.fullmatch(key) else _quote(key)
    return f"{parent}.{part}" if parent else part


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _single(text: str) -> str:
    """``text`` in single quotes, shortened and with control characters escaped."""
    short = text if len(text) <= 40 else text[:37] + "..."
    return "'" + json.dumps(short, ensure_ascii=False)[1:-1] + "'"


def _describe(value: object) -> str:
    """A short, one-line rendering of a (non-secret) value for a problem."""
    if isinstance(value, str):
        return _quote(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) or (isinstance(value, int) and value.bit_length() <= 64):
        return repr(value)
    return _kind(value)


def _kind(value: object) -> str:
    """The TOML type of ``value``, with an article."""
    if value is None:
        return "no value"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, datetime.date | datetime.time):
        return "a date/time"
    return f"a {type(value).__name__}"
