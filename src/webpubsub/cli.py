"""The ``webpubsub`` command: serve, demo, chat, check-config, token."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal, TypeVar

import click

from webpubsub import devcert
from webpubsub.config import (
    LOG_FORMATS,
    ServiceConfig,
    default_config,
    load_config,
    parse_access_keys,
)
from webpubsub.core.settings import EventHandlerSettings, HubSettings
from webpubsub.errors import BadRequest, ConfigError, ServiceUnavailable
from webpubsub.protocol.connection_string import generate_access_key
from webpubsub.protocol.tokens import issue_client_token
from webpubsub.protocol.urls import websocket_base
from webpubsub.server.logs import TEXT_FORMAT, use_log_format

if TYPE_CHECKING:
    from webpubsub.server.app import ServiceRunner
    from webpubsub.upstream.queue import EventQueue, QueuedEvent

log = logging.getLogger("webpubsub.cli")
T = TypeVar("T")

ACCESS_KEY_ENV = "WEBPUBSUB_ACCESS_KEY"
REDIS_URL_ENV = "WEBPUBSUB_REDIS_URL"
CONNECTION_STRING_ENV = "WebPubSubConnectionString"


def _run(
    main: Callable[[], Awaitable[None]], *, left_behind: Callable[[], str] | None = None
) -> None:
    """Run ``main`` on uvloop when available, until it returns or Ctrl-C / SIGTERM.

    The first signal cancels ``main`` (a graceful stop); a second one exits at once
    with status 128 + its number, after logging ``left_behind()`` (what it leaves)."""

    async def guarded() -> None:
        task = asyncio.ensure_future(main())
        loop = asyncio.get_running_loop()
        stopping = False

        def stop(sig: signal.Signals) -> None:
            nonlocal stopping
            if not stopping:
                stopping = True
                task.cancel()
                return
            what = left_behind() if left_behind is not None else ""
            log.warning("second %s: exiting now%s", sig.name, f"; {what}" if what else "")
            logging.shutdown()
            sys.stdout.flush()
            os._exit(128 + sig)

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop, sig)
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await task
            except OSError as exc:  # e.g. the port is taken
                click.echo(f"Cannot start: {exc.strerror or exc}", err=True)
                raise SystemExit(1) from None

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        asyncio.run(guarded())
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(guarded())


def _load(config_file: str | None) -> ServiceConfig:
    return _checked(lambda: load_config(config_file) if config_file else default_config())


def _checked(make: Callable[[], T]) -> T:
    """Build a config (or load its TLS files), turning its problems into one line each
    on stderr and exit 1."""
    try:
        return make()
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        raise SystemExit(1) from None


def _with_keys(config: ServiceConfig, flags: tuple[str, ...]) -> tuple[ServiceConfig, bool]:
    """Apply keys from flags, else the env, else the file; generate one if none."""
    keys = parse_access_keys(flags) or parse_access_keys(os.environ.get(ACCESS_KEY_ENV, ""))
    generated = False
    if not keys and not config.server.access_keys:
        keys, generated = (generate_access_key(),), True
    overridden = _checked(
        lambda: config.with_overrides(access_keys=keys or None, source="command line")
    )
    return overridden, generated


async def _forever() -> None:
    await asyncio.Event().wait()


def _tls_options(
    config: ServiceConfig, tls: bool, cert: str | None, key: str | None
) -> tuple[ServiceConfig, devcert.DevCert | None]:
    """Apply ``--tls-cert``/``--tls-key``; ``--tls`` without a certificate anywhere
    takes the development certificate (created on first use)."""
    if cert is not None or key is not None:
        return _checked(
            lambda: config.with_overrides(tls_cert=cert, tls_key=key, source="command line")
        ), None
    if not tls or config.server.tls:
        return config, None
    dev, done = devcert.ensure()
    for what in done:
        click.echo(f"Development certificate: {what} in {dev.directory}")
    tls_config = _checked(
        lambda: config.with_overrides(
            tls_cert=str(dev.cert), tls_key=str(dev.key), source="development certificate"
        )
    )
    return tls_config, dev


def _print_trust(dev: devcert.DevCert | None) -> None:
    if dev is not None:
        click.echo(f"TLS: the development certificate; clients must trust {dev.ca_cert}:")
        for line in devcert.trust_instructions(dev):
            click.echo(line)


def _reload_on_hangup(runner: ServiceRunner) -> None:
    """SIGHUP loads the TLS certificate and key again; a bad file keeps the current one."""

    def reload() -> None:
        try:
            runner.reload_tls()
        except ConfigError as exc:
            log.error("TLS reload failed, the current certificate stays: %s", exc.message)

    with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)


_TLS_OPTIONS = (
    click.option(
        "--tls",
        is_flag=True,
        help="Serve https:// and wss://; without a certificate, the development one.",
    ),
    click.option(
        "--tls-cert",
        type=click.Path(dir_okay=False),
        default=None,
        help="PEM certificate chain (with --tls-key); reloaded on SIGHUP.",
    ),
    click.option(
        "--tls-key", type=click.Path(dir_okay=False), default=None, help="PEM private key."
    ),
)


_LOG_FORMAT_OPTION = click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default=None,
    help="Log lines as text, or one JSON object per line (default: [server] log_format, text).",
)


def _with_tls_options(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_TLS_OPTIONS):
        command = option(command)
    return command


@click.group()
@click.option("--log-level", default="INFO", show_default=True, help="Python logging level.")
def main(log_level: str) -> None:
    """A self-hosted, wire-compatible Azure Web PubSub service."""
    level = log_level.upper()
    logging.basicConfig(level=level, format=TEXT_FORMAT)
    if level != "DEBUG":
        # The Azure SDK logs every request and response (headers included) at INFO.
        logging.getLogger("azure").setLevel(logging.WARNING)


@main.command()
@click.option("--host", default=None, help="Interface to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (default 8080).")
@click.option(
    "--access-key",
    "access_keys",
    multiple=True,
    help=f"Access key; repeat or comma-separate to rotate (first signs). Env: {ACCESS_KEY_ENV}.",
)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option(
    "--redis",
    "redis_url",
    envvar=REDIS_URL_ENV,
    default=None,
    help=f"Join other nodes over Redis: redis://[:password@]host:port/db. Env: {REDIS_URL_ENV}.",
)
@click.option("--node-id", default=None, help="This node's id (default: generated).")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Processes sharing the port (SO_REUSEPORT), each a node; needs --redis.",
)
@_LOG_FORMAT_OPTION
@_with_tls_options
def serve(
    host: str | None,
    port: int | None,
    access_keys: tuple[str, ...],
    config_file: str | None,
    redis_url: str | None,
    node_id: str | None,
    workers: int,
    log_format: str | None,
    tls: bool,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Run the service."""
    worker = os.environ.get(WORKER_ENV)
    if workers > 1 and worker is None:
        loaded = _load(config_file)
        use_log_format(log_format or loaded.server.log_format)
        _supervise(workers, loaded, redis_url, port, node_id, access_keys, tls)
        return
    if worker is not None:  # one of the supervisor's processes: its port, its own node id
        port = int(os.environ[WORKER_PORT_ENV])
        node_id = f"{node_id or os.environ[WORKER_BASE_ENV]}-{worker}"
    config, generated = _with_keys(_load(config_file), access_keys)
    config = _checked(
        lambda: config.with_overrides(
            host=host,
            port=port,
            redis_url=redis_url,
            node_id=node_id,
            log_format=log_format,
            source="command line",
        )
    )
    use_log_format(config.server.log_format)
    config, dev = _tls_options(config, tls, tls_cert, tls_key)

    started: list[ServiceRunner] = []

    def left_behind() -> str:
        upstream = started[0].upstream if started else None
        if upstream is None:
            return ""
        path = started[0].queue_path
        if path == ":memory:":
            return f"{upstream.queued()} queued event(s) lost: the event queue is in memory"
        return f"{upstream.queued()} event(s) stay queued in {path}"

    async def run() -> None:
        from webpubsub.server.app import ServiceRunner

        runner = ServiceRunner(config, reuse_port=worker is not None)
        started.append(runner)
        await _start(runner)
        try:
            _reload_on_hangup(runner)
            if generated:
                click.echo("No access key given: generated one for this run.")
            click.echo(f"Listening on {runner.scheme}://{config.server.host}:{runner.port}")
            if config.backplane.redis_url is not None and runner.node is not None:
                click.echo(f"Node {runner.node.node_id} joined the Redis backplane.")
            click.echo(f"Connection string: {runner.connection_string}")
            if runner.portal_link is not None:
                click.echo(f"Portal: {runner.portal_link}")
            _print_trust(dev)
            await _forever()
        finally:
            await runner.stop()

    _run(run, left_behind=left_behind)


WORKER_ENV = "WEBPUBSUB_WORKER"
WORKER_PORT_ENV = "WEBPUBSUB_WORKER_PORT"
WORKER_BASE_ENV = "WEBPUBSUB_WORKER_BASE"


def _supervise(
    workers: int,
    config: ServiceConfig,
    redis_url: str | None,
    port: int | None,
    node_id: str | None,
    access_keys: tuple[str, ...],
    tls: bool,
) -> None:
    """Run ``workers`` processes of this same command on one port, each a node of the
    Redis backplane; SIGINT/SIGTERM stop them all. Exits with the worst exit status.

    What every worker must share is settled here once: the port, the access key when
    none is given (a generated one), the development certificate."""
    import subprocess

    if (redis_url or config.backplane.redis_url) is None:
        click.echo(
            "--workers needs the Redis backplane (--redis URL or [backplane] redis_url): "
            "separate processes share nothing else.",
            err=True,
        )
        raise SystemExit(2)
    port = config.server.port if port is None else port
    if not port:  # every worker must bind the same port: pick one now
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    base = node_id or config.backplane.node_id or socket.gethostname().split(".")[0] or "node"
    env = {**os.environ, WORKER_PORT_ENV: str(port), WORKER_BASE_ENV: base}
    keys = parse_access_keys(access_keys) or parse_access_keys(os.environ.get(ACCESS_KEY_ENV, ""))
    if not keys and not config.server.access_keys:
        env[ACCESS_KEY_ENV] = generate_access_key()  # one key for all: tokens work on any
        click.echo("No access key given: generated one for this run.")
    if tls and not config.server.tls:
        devcert.ensure()  # made once, before the workers read it
    click.echo(f"Starting {workers} workers on port {port}.")
    children = [
        subprocess.Popen(  # noqa: S603 - this very command, with the worker's environment
            [sys.executable, "-m", "webpubsub.cli", *sys.argv[1:]],
            env={**env, WORKER_ENV: str(i)},
            # Their own session: a terminal's Ctrl-C reaches the supervisor alone, which
            # passes it on once (a second SIGINT would cut a worker's shutdown short).
            start_new_session=True,
            preexec_fn=_end_with_parent if sys.platform == "linux" else None,
        )
        for i in range(1, workers + 1)
    ]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    codes = [child.wait() for child in children]
    raise SystemExit(max(codes, key=abs))


def _end_with_parent() -> None:
    """In a worker (Linux): get SIGTERM when the supervisor dies, even by SIGKILL."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


async def _start(runner: ServiceRunner) -> None:
    """Start ``runner``; a certificate that cannot be loaded or a Redis that cannot be
    reached is reported in one line, not a traceback."""
    from webpubsub.server.app import tune_gc

    try:
        await runner.start()
    except (ConfigError, ServiceUnavailable) as exc:
        await runner.stop()
        problems = exc.problems if isinstance(exc, ConfigError) else [exc.message]
        for problem in problems:
            click.echo(problem, err=True)
        raise SystemExit(1) from None
    tune_gc()


@main.command("check-config")
@click.argument("config_file", type=click.Path(dir_okay=False))
def check_config(config_file: str) -> None:
    """Validate a config file (and load its TLS certificate) without starting the service."""
    config = _checked(lambda: load_config(config_file))
    server = config.server
    if server.tls_cert is not None and server.tls_key is not None:
        from webpubsub.server.tls import server_context

        cert, key = server.tls_cert, server.tls_key
        _checked(lambda: server_context(cert, key))
    click.echo(f"OK: {config_file}")


@main.command("dev-cert")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default=None,
    help=f"Where to keep it (default: a per-user data directory; env {devcert.DIR_ENV}).",
)
def dev_cert(directory: str | None) -> None:
    """Create (once) a local CA and a localhost certificate, and say how to trust it."""
    from pathlib import Path

    dev, done = devcert.ensure(Path(directory) if directory else None)
    click.echo(
        f"Development certificate in {dev.directory}"
        + (f" ({', '.join(done)})" if done else " (already there)")
    )
    click.echo(f"  CA:          {dev.ca_cert}")
    click.echo(f"  certificate: {dev.cert} (localhost, 127.0.0.1, ::1)")
    click.echo(f"  key:         {dev.key}")
    click.echo("Trust the CA in your clients:")
    for line in devcert.trust_instructions(dev):
        click.echo(line)
    where = f" --tls-cert {dev.cert} --tls-key {dev.key}" if directory else " --tls"
    click.echo(f"Then run: webpubsub serve{where}")


@main.command()
@click.option(
    "--connection-string",
    envvar=CONNECTION_STRING_ENV,
    required=True,
    help=f"The service's connection string. Env: {CONNECTION_STRING_ENV}.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=5000, show_default=True)
def chat(connection_string: str, host: str, port: int) -> None:
    """Run the tutorial's chat app (negotiate, event handler, page)."""
    from webpubsub.chat.app import run_chat

    run_chat(connection_string, host=host, port=port)


def demo_config(config: ServiceConfig, chat_port: int) -> ServiceConfig:
    """``config`` with hub ``chat`` wired to the chat app's event handler; the event queue
    in memory unless the file names a ``data_dir`` (a demo's leftover ``connected`` events
    would greet the next demo's chat with users long gone)."""
    handler = EventHandlerSettings(
        url_template=f"http://127.0.0.1:{chat_port}/eventhandler",
        user_event_pattern="*",
        system_events=frozenset({"connected"}),
        timeout_seconds=config.upstream.timeout_seconds,
    )
    hubs = dict(config.hubs)
    hubs["chat"] = HubSettings(name="chat", event_handlers=(handler,))
    server = config.server
    if server.data_dir is None:
        server = dataclasses.replace(server, data_dir=":memory:")
    return dataclasses.replace(config, hubs=hubs, server=server)


@main.command()
@click.option("--port", type=int, default=8080, show_default=True, help="The service's port.")
@click.option("--chat-port", type=int, default=5000, show_default=True, help="The chat app's port.")
@_LOG_FORMAT_OPTION
@_with_tls_options
def demo(
    port: int,
    chat_port: int,
    log_format: str | None,
    tls: bool,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Run the service and the tutorial's chat app together, wired, on this machine."""
    # The service must know the chat app's address and the chat app the service's
    # connection string: bind the chat app's socket first (port 0 picks a free one).
    try:
        chat_socket = socket.create_server(("127.0.0.1", chat_port))
    except OSError as exc:
        click.echo(f"Cannot listen on 127.0.0.1:{chat_port}: {exc.strerror or exc}", err=True)
        raise SystemExit(1) from None
    chat_port = chat_socket.getsockname()[1]
    config, _ = _with_keys(
        _checked(
            lambda: default_config().with_overrides(
                host="127.0.0.1", port=port, log_format=log_format
            )
        ),
        (),
    )
    use_log_format(config.server.log_format)
    config = demo_config(config, chat_port)
    config, dev = _tls_options(config, tls, tls_cert, tls_key)
    # The chat app calls the service's REST API: it trusts what the service presents.
    ca_file = str(dev.ca_cert) if dev is not None else None

    async def run() -> None:
        from webpubsub.chat.app import start_chat_on_socket
        from webpubsub.server.app import ServiceRunner

        service = ServiceRunner(config)
        await _start(service)
        chat_runner = None
        try:
            _reload_on_hangup(service)
            chat_runner = await start_chat_on_socket(
                service.connection_string, chat_socket, hub="chat", ca_file=ca_file
            )
            click.echo(f"Web PubSub service: {service.endpoint}")
            click.echo(f"Connection string: {service.connection_string}")
            if service.portal_link is not None:
                click.echo(f"Portal: {service.portal_link}")
            _print_trust(dev)
            click.echo(f"Chat app: open http://localhost:{chat_port}/ in two browser tabs.")
            await _forever()
        finally:
            if chat_runner is not None:
                await chat_runner.cleanup()
            await service.stop()

    try:
        _run(run)
    finally:
        chat_socket.close()


@main.command()
@click.option("--connection-string", envvar=CONNECTION_STRING_ENV, default=None)
@click.option("--endpoint", default="http://localhost:8080", show_default=True)
@click.option("--access-key", default=None, envvar=ACCESS_KEY_ENV)
@click.option("--hub", required=True)
@click.option("--user", default=None, help="The token's user id (sub).")
@click.option("--role", "roles", multiple=True, help="A role, e.g. webpubsub.sendToGroup.")
@click.option("--group", "groups", multiple=True, help="A group to join on connect.")
@click.option("--minutes", type=int, default=60, show_default=True)
def token(
    connection_string: str | None,
    endpoint: str,
    access_key: str | None,
    hub: str,
    user: str | None,
    roles: tuple[str, ...],
    groups: tuple[str, ...],
    minutes: int,
) -> None:
    """Print a client access URL for a hub."""
    from webpubsub.protocol.connection_string import parse_connection_string

    if connection_string:
        try:
            cs = parse_connection_string(connection_string)
        except BadRequest as exc:
            raise click.BadParameter(exc.message, param_hint="--connection-string") from None
        endpoint, access_key = cs.endpoint, cs.access_key
    keys = parse_access_keys(access_key or "")
    if not keys:
        raise click.UsageError("give --connection-string or --access-key")
    access_key = keys[0]  # like serve: the first of a comma-separated list signs
    base = endpoint.rstrip("/")
    jwt = issue_client_token(
        access_key,
        audience=f"{base.lower()}/client/hubs/{hub}",
        now=time.time(),
        ttl_seconds=minutes * 60,
        user_id=user,
        roles=roles,
        groups=groups,
    )
    click.echo(f"{websocket_base(base)}/client/hubs/{hub}?access_token={jwt}")


# -- events: the queue of connected/disconnected events ----------------------------------


@main.group()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--data-dir", default=None, help="The service's data_dir (default: the config's).")
@click.option("--node-id", default=None, help="The node whose queue (with the Redis backplane).")
@click.pass_context
def events(
    ctx: click.Context, config_file: str | None, data_dir: str | None, node_id: str | None
) -> None:
    """See and replay the queued connected/disconnected events (also next to a running
    service)."""
    from webpubsub.server.app import data_dir as configured_dir
    from webpubsub.upstream.queue import MEMORY, SqliteEventQueue, queue_file

    config = _load(config_file)
    directory = data_dir or configured_dir(config)
    path = queue_file(directory, node_id or config.backplane.node_id)
    if path == MEMORY or not os.path.exists(path):
        click.echo(f"No event queue at {path}.", err=True)
        raise SystemExit(1)
    # It waits for the service's writes; its own go in short batches with pauses
    # between them, so the service's writes (waiting 50 ms at most) get through.
    queue = SqliteEventQueue(path, exclusive=False, busy_timeout=5.0, batch_pause=0.02)
    ctx.call_on_close(queue.close)
    ctx.obj = queue


def _queue(ctx: click.Context) -> EventQueue:
    queue: EventQueue = ctx.obj
    return queue


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _describe_event(event: QueuedEvent) -> str:
    from webpubsub.upstream.http import safe_url

    ce_id = next((v for k, v in event.request.headers if k.lower() == "ce-id"), "")
    return (
        f"{event.seq}\t{event.event}\t{event.chain}\tce-id={ce_id}\t"
        f"attempts={event.attempts}\t{safe_url(event.request.url)}"
    )


@events.command("pending")
@click.option("--limit", type=int, default=100, show_default=True)
@click.pass_context
def events_pending(ctx: click.Context, limit: int) -> None:
    """List the events waiting for delivery, oldest first."""
    queue = _queue(ctx)
    for event in queue.pending(limit=limit):
        due = f"next={_when(event.next_at)}" if event.next_at else "next=now"
        error = f"\tlast error: {event.last_error}" if event.last_error else ""
        click.echo(f"{_describe_event(event)}\t{due}{error}")
    click.echo(f"{queue.count('pending')} pending, {queue.count('dead')} dead")


@events.command("dead")
@click.option("--limit", type=int, default=100, show_default=True)
@click.pass_context
def events_dead(ctx: click.Context, limit: int) -> None:
    """List the dead letters (events given up on), oldest first."""
    queue = _queue(ctx)
    for dead in queue.dead(limit=limit):
        click.echo(f"{_describe_event(dead.event)}\tdied={_when(dead.died)}\t{dead.reason}")
    click.echo(f"{queue.count('dead')} dead")


def _selection(seqs: tuple[int, ...], every: bool) -> list[int] | None:
    if every == bool(seqs):
        click.echo("Give event numbers (SEQ ...) or --all, not both.", err=True)
        raise SystemExit(2)
    return None if every else list(seqs)


@events.command("replay")
@click.argument("seqs", nargs=-1, type=int)
@click.option("--all", "every", is_flag=True, help="Every dead letter.")
@click.pass_context
def events_replay(ctx: click.Context, seqs: tuple[int, ...], every: bool) -> None:
    """Queue dead letters again (same ce-id; a new retry horizon). A running service
    picks them up within a second."""
    moved = _queue(ctx).replay(_selection(seqs, every), time.time())
    click.echo(f"{moved} event(s) queued again")


@events.command("purge")
@click.argument("table", type=click.Choice(["pending", "dead"]))
@click.argument("seqs", nargs=-1, type=int)
@click.option("--all", "every", is_flag=True, help="Every event of TABLE.")
@click.pass_context
def events_purge(ctx: click.Context, table: str, seqs: tuple[int, ...], every: bool) -> None:
    """Delete pending events or dead letters for good."""
    which: Literal["pending", "dead"] = "pending" if table == "pending" else "dead"
    gone = _queue(ctx).purge(which, _selection(seqs, every))
    click.echo(f"{gone} {table} event(s) deleted")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
