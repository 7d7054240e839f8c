"""The Redis backplane: many nodes, one service (the only module that imports ``redis``).

How the nodes share work (docs/architecture.md, "The Redis backplane"):

* **Commands** (sends, closes, group and permission changes) are published on one
  channel, ``{prefix}:cmd``, in the wire codec of ``protocol/backplane.py``: one
  ``PUBLISH`` per REST operation, whatever the number of recipients or nodes. Every
  node, the publisher included, applies each command to its own connections in the
  order Redis delivers them, so one sender's commands arrive in order everywhere.
* **Presence** lives in Redis, written by the node that holds the connection (from
  the hub's listener calls, pipelined in order): the connection (its node, user,
  roles), its user, its groups, its permission changes. Queries (exists, check
  permission, list group members) are one Redis round trip (a Lua script), never a
  survey of the nodes, and count a connection only while its node's heartbeat key
  lives.
* **Read your writes**: operations whose targets Redis already knows (a connection,
  a user's connections, a group's members) update presence in the same script that
  publishes the command, so a query right after a REST call sees its effect.
* **Heartbeats**: each node refreshes ``{prefix}:node:{id}`` (expiring after
  ``heartbeat_timeout``); a node that stops refreshing drops out of every answer at
  once. One node at a time (a lock key) reaps the presence a dead node left, and
  that node reports the dead node's connections to its own node (``reaped``), which
  sends their ``disconnected`` events: exactly once, since only the reaper that
  deletes a connection's key reports it.
* **Queued events** (``connected``/``disconnected`` waiting for their handler): each
  node mirrors its local queue into ``{prefix}:events:{id}`` (a hash, seq → record),
  in the background, after the local write. The reaper takes a dead node's mirrored
  events over into its own queue before it reaps that node's connections, and marks
  what it took in ``{prefix}:taken:{id}``; a node that comes back drops those.
* **Surveys** (observation only: the operator portal's view of every node) have a
  Redis client and subscription of their own (``_listen_surveys``), so their answers
  never wait in the command subscription's output buffer: Redis cutting it past
  ``client-output-buffer-limit pubsub`` costs surveys only (refused, answers missing,
  until it resubscribes), never commands. The asker publishes an opaque request on
  ``{prefix}:survey`` (with a request id, its node id and the answer limit) in the same
  script that lists the live nodes (``nodes`` members whose ``node:{id}`` heartbeat key
  lives); every node answers on the asker's ``{prefix}:surveyed:{id}``; the asker returns
  once every live node answered or the timeout passed (None for the rest). Bounded:
  requests 64 KiB, answers 1 MiB (a larger one is not sent: None), 16 surveys waiting
  per node (one more raises ServiceUnavailable), 16 being answered per node (one more is
  not answered), and ``SURVEY_BYTES_IN_FLIGHT`` (16 MiB) of answers on their way to one
  asker: a survey reserves its answer limit times the answering nodes (the survey
  channel's subscribers, counted by the publishing script, which publishes only if no
  more answer than reserved for), releases each node's share as its answer arrives, and
  waits within its timeout for room (then ServiceUnavailable); past 16 answering nodes
  the answer limit drops to 16 MiB / nodes. The data plane never depends on a survey:
  its answers may be missing (gathering replies from every node with a timeout is
  fragile, which is why queries read presence instead).
* **Faults**: a command that cannot be published, or a query that cannot be
  answered, raises :class:`ServiceUnavailable` (REST: 503 with a JSON body), never a
  silent success. The subscription reconnects with a bounded back-off; presence is
  written again from the node's own connections after every reconnect (Redis may
  have restarted empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, assert_never

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from webpubsub.backplane.base import (
    MAX_SURVEYS_ANSWERING,
    Backplane,
    NodeEndpoint,
    check_survey,
    run_surveyor,
)
from webpubsub.core.connection import Connection
from webpubsub.core.permissions import Permission, Permissions
from webpubsub.errors import CorruptEnvelope, ServiceUnavailable
from webpubsub.node.ports import EventStore, ReapedConnection
from webpubsub.protocol.backplane import (
    MAX_SURVEY_ANSWER_BYTES,
    Answer,
    ChangeGroup,
    ChangePermission,
    Close,
    Command,
    Exists,
    GroupAction,
    GroupMember,
    GroupRoom,
    Handover,
    HasPermission,
    ListGroup,
    Query,
    Scope,
    Send,
    SessionState,
    SurveyReply,
    SurveyRequest,
    decode_command,
    decode_session,
    decode_survey_reply,
    decode_survey_request,
    encode_command,
    encode_session,
    encode_survey_reply,
    encode_survey_request,
)
from webpubsub.protocol.odata import FilterSubject, parse_filter
from webpubsub.protocol.urls import redacted as _redacted

log = logging.getLogger("webpubsub.backplane")

DEFAULT_PREFIX = "webpubsub"
DEFAULT_HEARTBEAT_TIMEOUT = 10.0
"""Seconds after its last heartbeat that a node is taken for dead (documented ≤ 15 s)."""
PRESENCE_QUEUE_LIMIT = 100_000
"""Presence writes waiting for Redis; past this the queue is dropped and presence is
written again from the node's own connections once Redis answers."""
_RECONNECT_MAX_DELAY = 1.0
_T = TypeVar("_T")
_REDIS_FAULTS = (RedisError, OSError, RuntimeError)
"""What the background loops survive: Redis errors, and a connection whose transport
closed under it (uvloop raises RuntimeError for a write to a closed transport)."""
_STOP_TIMEOUT = 5.0
_SEP = "\x00"
_STOP: tuple[str, tuple[Any, ...]] = ("stop", ())
"""Queued last by :meth:`RedisBackplane.stop`: the writer finishes what is before it."""
REAPED_MARK_SECONDS = 3600
"""How long a reaped node's mark stays: a node cut off longer than this that comes back
writes its connections again (their ends were reported; a second event follows)."""
HANDOVER_TIMEOUT = 3.0
"""How long a node waits for the state of a connection another node holds."""
HELD_LIMIT = 100_000
"""Commands held back for pending handovers; past this they are applied at once."""
MAX_SURVEY_NODES = 1024
"""Answers one survey keeps before it knows the live nodes (a bound, not a guess)."""
SURVEY_BYTES_IN_FLIGHT = 16 * 1024 * 1024
"""The answer bytes that may be on their way to one asker across its open surveys: each
survey reserves its answer limit times the nodes that will answer it, released as each
answer arrives; a survey that does not fit waits (within its timeout) for others to
release theirs. Half of Redis's default ``client-output-buffer-limit pubsub`` hard
limit (32 MB), which would cut the asker's survey subscription (never its commands)."""
MIN_SURVEY_ANSWER_BYTES = 64 * 1024
"""The least answer limit a survey asks for: with more answering nodes than
``SURVEY_BYTES_IN_FLIGHT`` / this (256), a survey raises ServiceUnavailable."""
_SURVEY_ATTEMPTS = 3
"""Tries to publish a survey whose answering nodes outnumber what was reserved for."""
_WAKE: tuple[str, tuple[Any, ...]] = ("wake", ())
"""Queued when presence must be written anew: the writer looks at the rebuild flag."""
MIRROR_QUEUE_LIMIT = 10_000
MIRROR_QUEUE_BYTES = 64 * 1024 * 1024
"""Mirror writes (of queued events) waiting for Redis, by count and by bytes; past
either the writes are dropped and the mirror made to match the local queue again."""
TAKEOVER_BATCH = 200
"""Events of a dead node taken over per step: read, queued here durably, then removed
from the dead node's mirror in one script."""
TAKEN_MARK_SECONDS = 7 * 86400
"""How long a node's ``taken:`` mark stays: a node that comes back later than this
with its old queue file sends the events that were taken over again (same ``ce-id``)."""


class Keys:
    """Every key and channel name, in one place (sharded pub/sub later changes only this)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.commands = f"{prefix}:cmd"
        self.survey = f"{prefix}:survey"
        """The channel of survey requests (their answers go to the asker's ``surveyed:``
        channel, on the survey subscription: never beside the commands)."""
        self.nodes = f"{prefix}:nodes"
        self.reaper = f"{prefix}:reaper"

    def node(self, node_id: str) -> str:
        return f"{self.prefix}:node:{node_id}"

    def direct(self, node_id: str) -> str:
        """The channel of messages for one node only: handed-over connections."""
        return f"{self.prefix}:direct:{node_id}"

    def surveyed(self, node_id: str) -> str:
        """The channel of the answers to one node's surveys."""
        return f"{self.prefix}:surveyed:{node_id}"

    def node_conns(self, node_id: str) -> str:
        return f"{self.prefix}:conns:{node_id}"

    def reaped(self, node_id: str) -> str:
        """The connections (members as in ``conns:``) whose end a survivor reported when
        it reaped the node: if the node is alive after all, it learns which to close."""
        return f"{self.prefix}:reaped:{node_id}"

    def conn(self, hub: str, cid: str) -> str:
        return f"{self.prefix}:conn:{hub}:{cid}"

    def user(self, hub: str, user: str) -> str:
        return f"{self.prefix}:user:{hub}:{user}"

    def group(self, hub: str, group: str) -> str:
        return f"{self.prefix}:group:{hub}:{group}"

    def hub(self, hub: str) -> str:
        """The ids of the hub's connections (for filters and hub-wide operations)."""
        return f"{self.prefix}:hub:{hub}"

    def conn_groups(self, hub: str, cid: str) -> str:
        return f"{self.prefix}:cgroups:{hub}:{cid}"

    def perms(self, hub: str, cid: str) -> str:
        return f"{self.prefix}:perm:{hub}:{cid}"

    def events(self, node_id: str) -> str:
        """The mirror of a node's queued events: a hash, its local ``seq`` → the record."""
        return f"{self.prefix}:events:{node_id}"

    def taken(self, node_id: str) -> str:
        """The ``seq`` of the node's events a survivor took over (the node drops them)."""
        return f"{self.prefix}:taken:{node_id}"


# -- Lua: every script gets the prefix as ARGV[1] and builds its keys from it --------------
# (Lua string concatenation mirrors Keys above; a Redis Cluster move would pass KEYS.)

_LUA_COMMON = """
local p = ARGV[1]
local function alive(hub, cid)
  local node = redis.call('HGET', p .. ':conn:' .. hub .. ':' .. cid, 'n')
  if not node then return false end
  return redis.call('EXISTS', p .. ':node:' .. node) == 1
end
local function drop(hub, cid)
  local ck = p .. ':conn:' .. hub .. ':' .. cid
  local info = redis.call('HMGET', ck, 'n', 'u')
  if not info[1] then return 0 end
  for _, g in ipairs(redis.call('SMEMBERS', p .. ':cgroups:' .. hub .. ':' .. cid)) do
    redis.call('SREM', p .. ':group:' .. hub .. ':' .. g, cid)
  end
  if info[2] and info[2] ~= '' then
    redis.call('SREM', p .. ':user:' .. hub .. ':' .. info[2], cid)
  end
  redis.call('SREM', p .. ':conns:' .. info[1], hub .. '\\0' .. cid)
  redis.call('SREM', p .. ':hub:' .. hub, cid)
  redis.call('DEL', ck, p .. ':cgroups:' .. hub .. ':' .. cid, p .. ':perm:' .. hub .. ':' .. cid)
  return 1
end
local function members(hub, scope, id)
  if scope == 'connection' then
    if redis.call('EXISTS', p .. ':conn:' .. hub .. ':' .. id) == 1 then return {id} end
    return {}
  elseif scope == 'user' then
    return redis.call('SMEMBERS', p .. ':user:' .. hub .. ':' .. id)
  elseif scope == 'group' then
    return redis.call('SMEMBERS', p .. ':group:' .. hub .. ':' .. id)
  elseif scope == 'list' then
    return cjson.decode(id)
  end
  return nil
end
"""

# ARGV: prefix, hub, scope, id  ->  1 if a live connection is there
_EXISTS = (
    _LUA_COMMON
    + """
for _, cid in ipairs(members(ARGV[2], ARGV[3], ARGV[4]) or {}) do
  if alive(ARGV[2], cid) then return 1 end
end
return 0
"""
)

# ARGV: prefix, hub, group  ->  {cid, user, cid, user, ...} of live members
_LIST = (
    _LUA_COMMON
    + """
local out = {}
for _, cid in ipairs(redis.call('SMEMBERS', p .. ':group:' .. ARGV[2] .. ':' .. ARGV[3])) do
  if alive(ARGV[2], cid) then
    out[#out + 1] = cid
    out[#out + 1] = redis.call('HGET', p .. ':conn:' .. ARGV[2] .. ':' .. cid, 'u') or ''
  end
end
return out
"""
)

# ARGV: prefix, hub, cid, field  ->  false (no live connection) or {roles JSON, override}
_PERMISSION = (
    _LUA_COMMON
    + """
if not alive(ARGV[2], ARGV[3]) then return false end
local roles = redis.call('HGET', p .. ':conn:' .. ARGV[2] .. ':' .. ARGV[3], 'r')
local override = redis.call('HGET', p .. ':perm:' .. ARGV[2] .. ':' .. ARGV[3], ARGV[4])
return {roles or '[]', override or ''}
"""
)

# ARGV: prefix, channel, envelope, hub, scope, id, action, excluded JSON, groups JSON
# Updates what the targets' presence will be once their node applies the command, then
# publishes it: "group" adds/removes groups, "close" drops the connections.
_APPLY_AND_PUBLISH = (
    _LUA_COMMON
    + """
local hub, action = ARGV[4], ARGV[7]
local targets = members(hub, ARGV[5], ARGV[6])
if targets then
  local excluded = {}
  for _, cid in ipairs(cjson.decode(ARGV[8])) do excluded[cid] = true end
  local groups = cjson.decode(ARGV[9])
  for _, cid in ipairs(targets) do
    if not excluded[cid] then
      local cg = p .. ':cgroups:' .. hub .. ':' .. cid
      if action == 'close' then
        drop(hub, cid)
      elseif action == 'add' then
        for _, g in ipairs(groups) do
          redis.call('SADD', p .. ':group:' .. hub .. ':' .. g, cid)
          redis.call('SADD', cg, g)
        end
      elseif action == 'remove' then
        for _, g in ipairs(groups) do
          redis.call('SREM', p .. ':group:' .. hub .. ':' .. g, cid)
          redis.call('SREM', cg, g)
        end
      elseif action == 'remove_all' then
        for _, g in ipairs(redis.call('SMEMBERS', cg)) do
          redis.call('SREM', p .. ':group:' .. hub .. ':' .. g, cid)
        end
        redis.call('DEL', cg)
      end
    end
  end
end
return redis.call('PUBLISH', ARGV[2], ARGV[3])
"""
)

# ARGV: prefix, hub, cid, node  ->  the connection's info if it was ``node``'s (now dropped)
_REAP_ONE = (
    _LUA_COMMON
    + """
local ck = p .. ':conn:' .. ARGV[2] .. ':' .. ARGV[3]
local info = redis.call('HMGET', ck, 'n', 'u', 's', 't')
if not info[1] then return false end
if info[1] ~= ARGV[4] then
  -- it moved to another node meanwhile: only the stale membership goes
  redis.call('SREM', p .. ':conns:' .. ARGV[4], ARGV[2] .. '\\0' .. ARGV[3])
  return false
end
drop(ARGV[2], ARGV[3])
return info
"""
)

# ARGV: prefix, hub, cid  ->  the connection's group memberships are gone (rewritten next)
_RESET_GROUPS = (
    _LUA_COMMON
    + """
local cg = p .. ':cgroups:' .. ARGV[2] .. ':' .. ARGV[3]
for _, g in ipairs(redis.call('SMEMBERS', cg)) do
  redis.call('SREM', p .. ':group:' .. ARGV[2] .. ':' .. g, ARGV[3])
end
return redis.call('DEL', cg)
"""
)


# KEYS: reaper lock, the dead node's heartbeat; ARGV: this node, lock ms
#   ->  1 if this node still holds the lock and the node is still dead (lock extended)
_STILL_REAPING = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: the dead node's mirror, its taken mark, its heartbeat; ARGV: mark seconds, fields...
#   ->  -1 if the node came back (nothing taken), else those of seqs still there (taken)
# Removes the events a survivor has queued from the mirror and marks them taken, in one
# step: an event is taken by one survivor only, and only while its node is dead.
_TAKE = """
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local taken = {}
for i = 2, #ARGV do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('SADD', KEYS[2], ARGV[i])
    taken[#taken + 1] = ARGV[i]
  end
end
if #taken > 0 then redis.call('EXPIRE', KEYS[2], ARGV[1]) end
return taken
"""

# KEYS: the nodes set, the survey channel; ARGV: the heartbeat keys' prefix, envelope,
#   the most answering nodes the asker reserved answer bytes for
#   ->  {answering nodes (the survey channel's subscribers), 1, the live nodes (those
#       whose heartbeat key lives)} once the request is published; {answering, 0}, not
#       published, when more nodes would answer than were reserved for
_SURVEY = """
local answering = redis.call('PUBSUB', 'NUMSUB', KEYS[2])[2]
if answering > tonumber(ARGV[3]) then return {answering, 0} end
local result = {answering, 1}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. id) == 1 then result[#result + 1] = id end
end
redis.call('PUBLISH', KEYS[2], ARGV[2])
return result
"""


class RedisBackplane(Backplane):
    """Nodes joined through Redis; ``url`` is ``redis://`` or ``rediss://`` (TLS)."""

    def __init__(
        self,
        url: str,
        *,
        node_id: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
    ) -> None:
        self.url = url
        self.node_id = node_id or secrets.token_hex(4)
        self.keys = Keys(prefix)
        self.heartbeat_timeout = heartbeat_timeout
        # No retries inside redis-py: a failure surfaces at once (a 503 for the caller, a
        # reconnect with our own bounded back-off for the subscription, which must know
        # it was down: commands published meanwhile were missed, presence may be gone).
        self._redis = _client(url)
        # Surveys have clients of their own: their answers (up to a MiB each) never wait
        # in the command subscription's output buffer, whose overflow would make Redis
        # cut it (and the node miss commands), nor hold a connection of the data plane.
        self._survey_redis = _client(
            url, f"webpubsub-surveys-{re.sub(r'[^0-9A-Za-z_.:-]', '_', self.node_id)}"
        )
        self._node: NodeEndpoint | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._writes: asyncio.Queue[tuple[str, tuple[Any, ...]]] = asyncio.Queue()
        self._queued = 0
        self._written = 0
        self._progress = asyncio.Event()
        """Set whenever ``_written`` or the rebuild flag changes (waiters re-check)."""
        self._rebuild = asyncio.Event()
        self._subscribed = asyncio.Event()
        self.connected = False
        """Whether the subscription to the command channel is up."""
        self.surveys_connected = False
        """Whether the survey subscription (requests, answers to this node's) is up."""
        self._surveys_subscribed = asyncio.Event()
        self._stopping = False
        self._rewriting = False
        self._sync_changed = asyncio.Event()
        self._reap_after = 0.0
        """No reaping before this (loop time): after joining or reconnecting, every node
        gets a full heartbeat timeout to beat again, so an outage of Redis itself, which
        stops every heartbeat at once, never passes for the death of the nodes."""
        self._scripts = {
            name: self._redis.register_script(source)
            for name, source in (
                ("exists", _EXISTS),
                ("list", _LIST),
                ("permission", _PERMISSION),
                ("apply", _APPLY_AND_PUBLISH),
                ("reap", _REAP_ONE),
                ("reset_groups", _RESET_GROUPS),
                ("still_reaping", _STILL_REAPING),
                ("take", _TAKE),
                ("survey", _SURVEY),
            )
        }
        self._store: EventStore | None = None
        """This node's event queue, once attached: what the mirror copies."""
        self._epoch = ""
        """The attached queue file's epoch: the mirror's fields are ``{epoch}:{seq}``."""
        self._foreign_left = False
        """Events of an earlier queue file wait in the mirror: the heartbeat resyncs."""
        self._mirror_ops: deque[tuple[int, bytes | None]] = deque()
        """Mirror writes waiting, in order: (seq, record), or (seq, None) to remove."""
        self._mirror_bytes = 0
        self._mirror_resync = True
        """The mirror must be made to match the local queue (at start, after a fault)."""
        self._mirror_wake = asyncio.Event()
        self._mirror_progress = asyncio.Event()
        self._mirror_busy = False
        self._local: dict[tuple[str, str], Connection] = {}
        """This node's connections by (hub, id): what presence is rebuilt from."""
        self._pending: dict[str, _Pending] = {}
        """Handovers this node asked for, by request id."""
        self._waiting_on: str | None = None
        """The request whose Handover came by on the stream and whose state has not: the
        commands after it wait in ``_held``, in order."""
        self._held: deque[Command] = deque()
        self._sends: set[asyncio.Task[None]] = set()
        self._surveys: dict[str, _Survey] = {}
        """Surveys this node is waiting on, by request id."""
        self._answering: set[asyncio.Task[None]] = set()
        """This node's answers to surveys being made and sent."""
        self._survey_bytes = 0
        """Answer bytes reserved by this node's open surveys (``SURVEY_BYTES_IN_FLIGHT``)."""
        self._survey_budget = asyncio.Event()
        """Set whenever reserved answer bytes are released."""
        self._answerers = 1
        """How many nodes answered the last survey published (this one at least)."""
        self._reaping: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, node: NodeEndpoint) -> None:
        self._node = node
        try:
            # A previous run with this node id that died left its connections behind (a
            # restart comes before any survivor could reap them): they end now.
            if left := await self._reap_node(self.node_id):
                log.warning("node %s ended %d connections of its previous run", self.node_id, left)
            await self._redis.delete(self.keys.reaped(self.node_id))  # that run's mark
            await self._beat()
        except RedisError as exc:
            raise ServiceUnavailable(
                f"cannot reach Redis at {_redacted(self.url)}: {exc}"
            ) from None
        self._tasks = [
            asyncio.create_task(self._listen(), name="redis-listen"),
            asyncio.create_task(self._listen_surveys(), name="redis-surveys"),
            asyncio.create_task(self._write_presence(), name="redis-presence"),
            asyncio.create_task(self._heartbeat(), name="redis-heartbeat"),
        ]
        if self._store is not None:
            self._tasks.append(asyncio.create_task(self._write_mirror(), name="redis-events"))
        try:
            async with asyncio.timeout(5.0):
                await self._subscribed.wait()
                await self._surveys_subscribed.wait()
        except TimeoutError:
            raise ServiceUnavailable(
                f"cannot subscribe to Redis at {_redacted(self.url)} within 5 s"
            ) from None
        log.info("node %s joined the Redis backplane at %s", self.node_id, _redacted(self.url))

    async def stop(self) -> None:
        """Leave at once: this node's presence goes now, not after the heartbeat timeout.

        The presence writer is asked to finish (it writes what is queued, the clients
        closed at shutdown typically) rather than cancelled: redis-py may swallow a
        cancellation that lands inside a command. Every wait here is bounded.
        """
        self._stopping = True  # the loops end even if a cancellation is swallowed
        writers = [t for t in self._tasks if t.get_name() in ("redis-presence", "redis-events")]
        if self._reaping is not None:
            self._tasks.append(self._reaping)
        for task in self._tasks:
            if task not in writers:
                task.cancel()
        for answering in self._answering:
            answering.cancel()
        if writers:
            self._writes.put_nowait(_STOP)
            self._mirror_wake.set()
            await asyncio.wait(writers, timeout=_STOP_TIMEOUT)
            for writer in writers:
                writer.cancel()
        if self._tasks or self._sends or self._answering:
            await asyncio.wait(
                [*self._tasks, *self._sends, *self._answering], timeout=_STOP_TIMEOUT
            )
        self._tasks = []
        with contextlib.suppress(RedisError, OSError):
            await self._leave()
        for client in (self._redis, self._survey_redis):
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
        self._node = None

    def health(self) -> dict[str, object]:
        return {
            "backplane": "redis",
            "redis": "connected" if self.connected else "disconnected",
        }

    # -- commands ------------------------------------------------------------------------

    async def publish(self, command: Command) -> None:
        envelope = encode_command(command)
        try:
            if isinstance(command, ChangePermission) and command.group is not None:
                # Record the override where every node's check reads it, then publish:
                # a check right after the grant sees it.
                pipe = self._redis.pipeline(transaction=True)
                pipe.hset(
                    self.keys.perms(command.hub, command.connection_id),
                    _perm_field(command.permission, command.group),
                    "1" if command.grant else "0",
                )
                pipe.publish(self.keys.commands, envelope)
                await pipe.execute()
                return
            target = _presence_target(command)
            if target is None:
                await self._redis.publish(self.keys.commands, envelope)
                return
            scope, ident, action, excluded, groups = target
            if isinstance(command, ChangeGroup | Close) and (
                scope == "all" or (isinstance(command, ChangeGroup) and command.filter)
            ):
                # Redis cannot list or filter these targets by itself: resolve them here
                # from presence, so that a query right after sees the change too.
                ids = await self._resolve(command)
                scope, ident = "list", orjson.dumps(ids).decode()
            await self._scripts["apply"](
                args=[
                    self.keys.prefix,
                    self.keys.commands,
                    envelope,
                    command.hub,
                    scope,
                    ident,
                    action,
                    orjson.dumps(sorted(excluded)),
                    orjson.dumps(list(groups)),
                ]
            )
        except RedisError as exc:
            raise ServiceUnavailable(_unavailable(exc)) from None

    async def gather(self, query: Query) -> list[Answer]:
        try:
            return [await self._answer(query)]
        except RedisError as exc:
            raise ServiceUnavailable(_unavailable(exc)) from None

    async def _answer(self, query: Query) -> Answer:
        p = self.keys.prefix
        match query:
            case Exists():
                found = await self._scripts["exists"](
                    args=[p, query.hub, query.target.scope.value, query.target.id]
                )
                return bool(found)  # a hub-wide Exists (no REST operation asks it) is False
            case ListGroup():
                flat = await self._scripts["list"](args=[p, query.hub, query.group])
                pairs = [(_text(flat[i]), _text(flat[i + 1])) for i in range(0, len(flat), 2)]
                return tuple(GroupMember(cid, user or None) for cid, user in pairs)
            case HasPermission():
                if query.group is None:
                    return None
                field = _perm_field(query.permission, query.group)
                found = await self._scripts["permission"](
                    args=[p, query.hub, query.connection_id, field]
                )
                if not found:
                    return None
                roles_json, override = _text(found[0]), _text(found[1])
                if override:
                    return override == "1"
                roles = orjson.loads(roles_json)
                permission = Permission.parse(query.permission)
                return Permissions.from_roles(roles).allows(permission, query.group)
            case GroupRoom():
                key = self.keys.conn_groups(query.hub, query.connection_id)
                async with self._redis.pipeline(transaction=False) as pipe:
                    await self._scripts["exists"](
                        args=[p, query.hub, Scope.CONNECTION.value, query.connection_id],
                        client=pipe,
                    )
                    pipe.sismember(key, query.group)
                    pipe.scard(key)
                    found, member, count = await pipe.execute()
                if not found:
                    return None
                return bool(member) or int(count) < query.limit
            case _:
                raise AssertionError(f"unknown query {query!r}")

    # -- presence: the hub listener (synchronous; written by a background task) ----------

    def added(self, hub: str, conn: Connection) -> None:
        self._local[(hub, conn.connection_id)] = conn
        self._queue("added", hub, conn)

    def removed(self, hub: str, conn: Connection, groups: Collection[str]) -> None:
        self._local.pop((hub, conn.connection_id), None)
        if conn.moved_to is not None:  # it lives on, on another node: that node owns it now
            self._queue("moved", hub, conn)
            return
        self._queue("removed", hub, conn)

    def joined(self, hub: str, conn: Connection, group: str) -> None:
        self._queue("joined", hub, conn, group)

    def left(self, hub: str, conn: Connection, group: str) -> None:
        self._queue("left", hub, conn, group)

    def state_changed(self, hub: str, conn: Connection) -> None:
        self._queue("state", hub, conn)

    def _queue(self, op: str, *args: Any) -> None:
        if self._rebuild.is_set():
            return  # everything is written anew from the local connections
        if self._writes.qsize() >= PRESENCE_QUEUE_LIMIT:
            log.warning("presence writes backed up; rebuilding presence once Redis answers")
            self._drain_queue()
            self._need_rebuild()
            return
        self._writes.put_nowait((op, args))
        self._queued += 1

    def _drain_queue(self) -> None:
        """Drop queued changes (a rebuild writes the current state instead); a pending
        stop stays queued."""
        stop = False
        while not self._writes.empty():
            item = self._writes.get_nowait()
            if item is _STOP:
                stop = True
            elif item is not _WAKE:
                self._written += 1
        self._progress.set()
        if stop:
            self._writes.put_nowait(_STOP)

    async def _write_presence(self) -> None:
        """Apply queued presence changes in order, pipelined; rebuild after a fault."""
        while True:
            if self._rebuild.is_set():
                # Cleared before the snapshot is taken: changes made while it is being
                # written are queued as usual and written after it, in order.
                self._rebuild.clear()
                self._rewriting = True
                try:
                    await self._rewrite_all()
                except _REDIS_FAULTS as exc:
                    log.warning("presence rebuild failed (%s); retrying", exc)
                    self._need_rebuild()
                    await asyncio.sleep(_RECONNECT_MAX_DELAY)  # a bounded back-off
                    continue
                finally:
                    self._rewriting = False
                self._sync_changed.set()
            item = await self._writes.get()
            if item is _STOP:
                return
            if item is _WAKE:
                continue
            batch = [item]
            while not self._writes.empty() and len(batch) < 1000:
                item = self._writes.get_nowait()
                if item is _STOP:
                    self._writes.put_nowait(_STOP)  # write this batch, then stop
                    break
                if item is not _WAKE:
                    batch.append(item)
            try:
                pipe = self._redis.pipeline(transaction=False)
                for name, values in batch:
                    self._stage(pipe, name, *values)
                await pipe.execute()
            except _REDIS_FAULTS as exc:
                log.warning("presence write failed (%s); rebuilding once Redis answers", exc)
                self._drain_queue()
                self._need_rebuild()
            self._written += len(batch)
            self._progress.set()

    async def synced(self) -> None:
        """Return once subscribed with this node's presence written (after start or a
        reconnect to Redis); bound it with ``asyncio.timeout``."""
        while True:
            self._sync_changed.clear()
            if self.connected and not self._rebuild.is_set() and not self._rewriting:
                return
            await self._sync_changed.wait()

    async def lost(self) -> None:
        """Return once the subscription to Redis is down (bound it with ``asyncio.timeout``)."""
        while True:
            self._sync_changed.clear()
            if not self.connected:
                return
            await self._sync_changed.wait()

    def _set_connected(self, up: bool) -> None:
        if up and not self.connected:
            self._reap_after = asyncio.get_running_loop().time() + self.heartbeat_timeout
        self.connected = up
        self._sync_changed.set()

    def _need_rebuild(self) -> None:
        self._need_mirror_resync()
        self._rebuild.set()
        self._sync_changed.set()
        self._progress.set()
        self._writes.put_nowait(_WAKE)  # the writer may be waiting for a write

    async def flushed(self) -> None:
        """Return once every presence change made so far has been written (or dropped
        for a rebuild); bound it with ``asyncio.timeout``."""
        target = self._queued
        while True:
            self._progress.clear()
            if self._written >= target or self._rebuild.is_set():
                return
            await self._progress.wait()

    def _stage(self, pipe: Any, op: str, hub: str, conn: Connection, group: str = "") -> None:
        k, cid = self.keys, conn.connection_id
        if op == "added":
            pipe.hset(
                k.conn(hub, cid),
                mapping={
                    "n": self.node_id,
                    "u": conn.user_id or "",
                    "r": orjson.dumps(list(conn.permissions.roles())),
                    "s": conn.subprotocol or "",
                    "t": conn.state,
                    "k": _token_hash(conn.reconnection_token) if conn.reconnection_token else "",
                },
            )
            pipe.sadd(k.node_conns(self.node_id), f"{hub}{_SEP}{cid}")
            pipe.sadd(k.hub(hub), cid)
            if conn.user_id:
                pipe.sadd(k.user(hub, conn.user_id), cid)
        elif op == "removed":
            for g in conn.groups:
                pipe.srem(k.group(hub, g), cid)
            # The groups it had were already cleared locally: clear what Redis holds.
            pipe.eval(
                "for _, g in ipairs(redis.call('SMEMBERS', KEYS[1])) do "
                "redis.call('SREM', ARGV[1] .. g, ARGV[2]) end "
                "return redis.call('DEL', KEYS[1])",
                1,
                k.conn_groups(hub, cid),
                f"{k.prefix}:group:{hub}:",
                cid,
            )
            if conn.user_id:
                pipe.srem(k.user(hub, conn.user_id), cid)
            pipe.srem(k.node_conns(self.node_id), f"{hub}{_SEP}{cid}")
            pipe.srem(k.hub(hub), cid)
            pipe.delete(k.conn(hub, cid), k.perms(hub, cid))
        elif op == "moved":
            pipe.srem(k.node_conns(self.node_id), f"{hub}{_SEP}{cid}")
        elif op == "state":
            # Only into a record that is still there and still this node's (a reaper may
            # have ended it, another node taken it over): the state a survivor sends with
            # the connection's disconnected event.
            pipe.eval(
                "if redis.call('HGET', KEYS[1], 'n') == ARGV[2] then "
                "redis.call('HSET', KEYS[1], 't', ARGV[1]) end",
                1,
                k.conn(hub, cid),
                conn.state,
                self.node_id,
            )
        elif op == "joined":
            pipe.sadd(k.group(hub, group), cid)
            pipe.sadd(k.conn_groups(hub, cid), group)
        elif op == "left":
            pipe.srem(k.group(hub, group), cid)
            pipe.srem(k.conn_groups(hub, cid), group)

    def _drop_reported(self, gone: list[tuple[str, str]]) -> None:
        """Connections that ended here while this node was cut off, whose end a survivor
        reported: their ``disconnected`` still queued here is not sent a second time."""
        if not gone or self._store is None:
            return
        try:
            dropped = self._store.drop_ended(gone)
        except Exception as exc:  # the queue closing at shutdown, or its file failing
            log.warning(
                "node %s could not drop reported disconnected events: %s", self.node_id, exc
            )
            return
        if dropped:
            log.warning(
                "node %s was taken for dead while cut off: %d queued events of connections "
                "whose end another node reported are not sent from here",
                self.node_id,
                dropped,
            )

    async def _rewrite_all(self) -> None:
        """Write this node's presence again from its own connections (after a fault):
        what Redis still holds of connections that ended, or of groups they left, while
        the writes could not reach it goes; what the node holds now is written."""
        self._drain_queue()
        mark = self.keys.reaped(self.node_id)
        reported = await self._redis.smembers(mark)
        if reported:
            await self._redis.delete(mark)
        keys = [(hub, cid) for raw in reported for hub, _, cid in [_text(raw).partition(_SEP)]]
        ended = [key for key in keys if key in self._local]
        self._drop_reported([key for key in keys if key not in self._local])
        if ended and self._node is not None:
            # Taken for dead while cut off alone: a survivor sent these connections'
            # disconnected events. They end here without another; clients reconnect.
            log.warning(
                "node %s was taken for dead while cut off from Redis: closing %d "
                "connections whose ends were reported",
                self.node_id,
                len(ended),
            )
            for hub, cid in ended:
                self._local.pop((hub, cid), None)
                self._node.abandon(hub, cid)
        local = dict(self._local)  # the snapshot: later changes are queued as usual
        recorded = await self._redis.smembers(self.keys.node_conns(self.node_id))
        pipe = self._redis.pipeline(transaction=False)
        # A connection counts only while its node's key is there: after Redis restarted
        # empty, or the key lapsed while this node was cut off, it comes back with them.
        self._stage_beat(pipe)
        for raw in recorded:
            hub, _, cid = _text(raw).partition(_SEP)
            if (hub, cid) not in local:  # ended here meanwhile (its event was sent then)
                await self._scripts["reap"](
                    args=[self.keys.prefix, hub, cid, self.node_id], client=pipe
                )
        for (hub, cid), conn in local.items():
            await self._scripts["reset_groups"](args=[self.keys.prefix, hub, cid], client=pipe)
            self._stage(pipe, "added", hub, conn)
            for group in conn.groups:
                self._stage(pipe, "joined", hub, conn, group)
        await pipe.execute()
        log.info("presence of %d connections written again", len(local))

    # -- the subscription ----------------------------------------------------------------

    async def _listen(self) -> None:
        """The command subscription: the command stream and this node's direct channel."""
        await self._follow(
            self._redis,
            (self.keys.commands, self.keys.direct(self.node_id)),
            self._on_message,
            self._commands_up,
            self._commands_down,
        )

    async def _listen_surveys(self) -> None:
        """The survey subscription, on a connection of its own: requests, and the answers
        to this node's surveys. Its loss costs surveys only (answers missing meanwhile),
        never commands."""
        await self._follow(
            self._survey_redis,
            (self.keys.survey, self.keys.surveyed(self.node_id)),
            self._on_survey_message,
            self._surveys_up,
            self._surveys_down,
        )

    async def _follow(
        self,
        client: aioredis.Redis,
        channels: tuple[str, ...],
        dispatch: Callable[[str, bytes], None],
        up: Callable[[], None],
        down: Callable[[Exception], None],
    ) -> None:
        """Subscribe to ``channels`` and hand each message to ``dispatch`` until stopped,
        subscribing again after a fault with a bounded back-off."""
        delay = 0.05
        while not self._stopping:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*channels)
                up()
                delay = 0.05
                while not self._stopping:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        try:
                            dispatch(_text(message["channel"]), message["data"])
                        except Exception:  # one bad message must not stop the stream
                            log.exception("node %s failed on a message from Redis", self.node_id)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                raise
            except _REDIS_FAULTS as exc:
                down(exc)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                await asyncio.sleep(delay)  # a bounded back-off between reconnects
                delay = min(delay * 2, _RECONNECT_MAX_DELAY)

    def _commands_up(self) -> None:
        if self.connected is False and self._subscribed.is_set():
            log.warning(
                "node %s resubscribed to Redis: commands published meanwhile "
                "were not delivered to its clients",
                self.node_id,
            )
            self._need_rebuild()
        self._set_connected(True)
        self._subscribed.set()

    def _commands_down(self, exc: Exception) -> None:
        if self.connected:
            log.warning("node %s lost its Redis subscription: %s", self.node_id, exc)
        self._set_connected(False)

    def _surveys_up(self) -> None:
        if not self.surveys_connected and self._surveys_subscribed.is_set():
            log.info("node %s resubscribed to the surveys", self.node_id)
        self.surveys_connected = True
        self._surveys_subscribed.set()
        self._sync_changed.set()

    def _surveys_down(self, exc: Exception) -> None:
        if self.surveys_connected:
            log.warning(
                "node %s lost its survey subscription (commands are not affected): %s",
                self.node_id,
                exc,
            )
        self.surveys_connected = False
        self._sync_changed.set()

    async def surveys_linked(self, up: bool = True) -> None:
        """Return once the survey subscription is up (or, ``up=False``, down); bound it
        with ``asyncio.timeout``."""
        while True:
            self._sync_changed.clear()
            if self.surveys_connected is up:
                return
            await self._sync_changed.wait()

    def _on_message(self, channel: str, raw: bytes) -> None:
        if channel == self.keys.commands:
            self._deliver(raw)
        else:
            self._deliver_direct(raw)

    def _on_survey_message(self, channel: str, raw: bytes) -> None:
        if channel == self.keys.survey:
            self._on_survey(raw)
        else:
            self._deliver_survey_reply(raw)

    def _deliver(self, raw: bytes) -> None:
        if self._node is None:
            return
        try:
            command = decode_command(raw)
        except CorruptEnvelope as exc:
            log.warning("dropped a corrupt command from Redis: %s", exc.message)
            return
        self._accept(command)

    def _accept(self, command: Command) -> None:
        """Apply ``command``, or hold it while a connection is on its way here."""
        if self._waiting_on is None:
            self._step(command)
            return
        if len(self._held) >= HELD_LIMIT:
            log.warning("too many commands held for a handover; giving the handovers up")
            for pending in self._pending.values():
                pending.gave_up = True
                if not pending.future.done():
                    pending.future.set_result("The service is too busy to recover the connection.")
            self._resume()
            self._step(command)
            return
        self._held.append(command)

    def _step(self, command: Command) -> None:
        """Apply one command of the stream; this node's own Handover waits for its state."""
        if self._node is None:
            return
        if isinstance(command, Handover) and command.to_node == self.node_id:
            pending = self._pending.get(command.request_id)
            if pending is None or (pending.gave_up and not pending.arrived):
                return
            if pending.arrived:
                self._settle(command.request_id)
            else:
                self._waiting_on = command.request_id  # later commands wait for the state
            return
        self._node.apply(command)

    def _resume(self) -> None:
        """Apply the held commands in order, until another Handover has to wait."""
        self._waiting_on = None
        while self._held and self._waiting_on is None:
            self._step(self._held.popleft())

    def _settle(self, request_id: str) -> None:
        """The state of a requested connection is here: adopt it, wake the requester."""
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return
        outcome = pending.outcome
        if isinstance(outcome, SessionState):
            try:
                pending.adopt(outcome)
            except Exception:  # a state this node cannot use must not stop its stream
                log.exception("could not adopt connection %s", outcome.connection_id)
                outcome = "The connection's state could not be used here."
            else:
                outcome = None
                if pending.gave_up:
                    log.warning(
                        "connection %s arrived after its recovery gave up; messages sent "
                        "meanwhile may be missing from it",
                        pending.connection_id,
                    )
        if not pending.future.done():
            pending.future.set_result(outcome)

    def _deliver_direct(self, raw: bytes) -> None:
        try:
            request_id, session = decode_session(raw)
        except CorruptEnvelope as exc:
            log.warning("dropped a corrupt message on the direct channel: %s", exc.message)
            return
        pending = self._pending.get(request_id)
        if pending is None or pending.arrived:
            return
        if isinstance(session, SessionState) and (
            session.hub != pending.hub or session.connection_id != pending.connection_id
        ):
            session = "The handed-over state is not the requested connection's."
        pending.outcome, pending.arrived = session, True
        if self._waiting_on == request_id:
            self._settle(request_id)
            self._resume()
        elif pending.gave_up:
            self._settle(request_id)  # late: adopt it anyway, so that it ends normally
        # else its Handover is still held behind another one: settled when replayed

    # -- handover of reliable connections ------------------------------------------------

    async def take_over(
        self,
        hub: str,
        connection_id: str,
        token: str,
        subprotocols: tuple[str, ...],
        adopt: Callable[[SessionState], None],
    ) -> str | None:
        self._prune_pending()
        try:
            owner_raw, token_hash = await self._redis.hmget(
                self.keys.conn(hub, connection_id), ["n", "k"]
            )
            if owner_raw is None or _text(owner_raw) == self.node_id:
                return None
            if token_hash is None or not hmac.compare_digest(_text(token_hash), _token_hash(token)):
                return "The reconnection token is not valid."  # asked of no other node
            owner = _text(owner_raw)
            if not await self._redis.exists(self.keys.node(owner)):
                return "The service node that held the connection is gone."
        except RedisError as exc:
            return f"The connection cannot be recovered now: {_unavailable(exc)}"
        request_id = secrets.token_hex(8)
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        pending = _Pending(adopt, future, hub, connection_id, time.monotonic())
        self._pending[request_id] = pending
        published = False
        try:
            command = Handover(hub, connection_id, token, subprotocols, self.node_id, request_id)
            await self._redis.publish(self.keys.commands, encode_command(command))
            published = True
            return await asyncio.wait_for(asyncio.shield(future), HANDOVER_TIMEOUT)
        except RedisError as exc:
            return f"The connection cannot be recovered now: {_unavailable(exc)}"
        except TimeoutError:
            return "The service node that held the connection did not answer."
        finally:
            if not future.done():
                pending.gave_up = True
                if not published:
                    self._pending.pop(request_id, None)
                if self._waiting_on == request_id:
                    self._resume()

    async def _resolve(self, command: ChangeGroup | Close) -> list[str]:
        """The ids of the connections ``command`` targets, as presence knows them."""
        target, hub = command.target, command.hub
        if target.scope is Scope.ALL:
            ids = [_text(v) for v in await self._redis.smembers(self.keys.hub(hub))]
        elif target.scope is Scope.USER:
            ids = [_text(v) for v in await self._redis.smembers(self.keys.user(hub, target.id))]
        elif target.scope is Scope.GROUP:
            ids = [_text(v) for v in await self._redis.smembers(self.keys.group(hub, target.id))]
        else:
            ids = [target.id]
        text = command.filter if isinstance(command, ChangeGroup) else ""
        if not text or not ids:
            return ids
        compiled = parse_filter(text)  # validated by the REST layer already
        pipe = self._redis.pipeline(transaction=False)
        for cid in ids:
            pipe.hmget(self.keys.conn(hub, cid), ["u", "s"])
            pipe.smembers(self.keys.conn_groups(hub, cid))
        replies = await pipe.execute()
        matched = []
        for i, cid in enumerate(ids):
            (user, subprotocol), groups = replies[2 * i], replies[2 * i + 1]
            subject = FilterSubject(
                cid,
                _text(user) or None if user is not None else None,
                frozenset(_text(g) for g in groups),
                _text(subprotocol) or None if subprotocol is not None else None,
            )
            if compiled.matches(subject):
                matched.append(cid)
        return matched

    def _prune_pending(self) -> None:
        """Forget requests given up long ago whose state never came."""
        stale = time.monotonic() - 10 * HANDOVER_TIMEOUT
        for request_id, pending in list(self._pending.items()):
            if pending.gave_up and pending.created < stale:
                del self._pending[request_id]

    def hand_over(
        self,
        to_node: str,
        request_id: str,
        session: SessionState | str,
        undelivered: Callable[[], None] | None = None,
    ) -> None:
        task = asyncio.get_running_loop().create_task(
            self._send_direct(to_node, encode_session(request_id, session), undelivered)
        )
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send_direct(
        self, to_node: str, payload: bytes, undelivered: Callable[[], None] | None
    ) -> None:
        try:
            receivers = await self._redis.publish(self.keys.direct(to_node), payload)
        except RedisError as exc:
            log.warning("could not hand a connection over to node %s: %s", to_node, exc)
            receivers = 0
        if not receivers and undelivered is not None:
            undelivered()  # nobody took it: the connection stays here

    def handover(self) -> RedisBackplane:
        """The handover port of reliable connections: this backplane."""
        return self

    # -- surveys (observation only) -----------------------------------------------------

    async def survey(
        self,
        request: bytes,
        *,
        timeout: float = 1.0,  # noqa: ASYNC109 (the answerers' time too; a partial result after)
    ) -> list[tuple[str, bytes | None]]:
        check_survey(request, timeout, len(self._surveys))
        if self._node is None or not self.connected or not self.surveys_connected:
            raise ServiceUnavailable(
                "The backplane (Redis) is not connected: the nodes cannot be surveyed."
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        request_id = secrets.token_hex(8)
        pending = _Survey(loop.create_future(), {})
        self._surveys[request_id] = pending  # before publishing: answers may come first
        try:
            live = await self._publish_survey(request_id, request, pending, deadline)
            expected = pending.expect(live)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await pending.done
            return [(node, pending.answers.get(node)) for node in sorted(expected)]
        finally:
            del self._surveys[request_id]
            self._release(pending, pending.reserved)

    async def _publish_survey(
        self, request_id: str, request: bytes, pending: _Survey, deadline: float
    ) -> list[str]:
        """Reserve the answers' bytes, then publish the request; the live nodes.

        The reservation is the answer limit times the nodes that will answer (the survey
        channel's subscribers, as the last survey found them): the limit is 1 MiB, less
        when more nodes answer than ``SURVEY_BYTES_IN_FLIGHT`` allows at that. Published
        only if no more nodes answer than reserved for (else reserved anew, bounded)."""
        loop = asyncio.get_running_loop()
        for _ in range(_SURVEY_ATTEMPTS):
            answerers = max(1, self._answerers)
            limit = min(MAX_SURVEY_ANSWER_BYTES, SURVEY_BYTES_IN_FLIGHT // answerers)
            if limit < MIN_SURVEY_ANSWER_BYTES:
                raise ServiceUnavailable(
                    f"{answerers} nodes answer surveys: too many to survey them at once."
                )
            await self._reserve(pending, limit * answerers, deadline)
            pending.limit = limit
            left = deadline - loop.time()
            if left <= 0:
                break
            envelope = encode_survey_request(
                SurveyRequest(request_id, self.node_id, left, request, limit)
            )
            try:
                result = await self._scripts["survey"](
                    keys=[self.keys.nodes, self.keys.survey],
                    args=[self.keys.node(""), envelope, answerers],
                    client=self._survey_redis,
                )
            except _REDIS_FAULTS as exc:
                raise ServiceUnavailable(_unavailable(exc)) from None
            self._answerers = int(result[0])
            if int(result[1]):
                return [_text(n) for n in result[2:]]
            self._release(pending, pending.reserved)  # more answer: reserve for them
        raise ServiceUnavailable("The nodes could not be surveyed in time: try again.")

    async def _reserve(self, pending: _Survey, size: int, deadline: float) -> None:
        """Reserve ``size`` answer bytes for ``pending``, waiting (until ``deadline``) for
        other surveys to release theirs; ServiceUnavailable past it."""
        while self._survey_bytes + size > SURVEY_BYTES_IN_FLIGHT:
            self._survey_budget.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._survey_budget.wait()
            except TimeoutError:
                raise ServiceUnavailable(
                    "This node's surveys are waiting on as many answers as it takes: try again."
                ) from None
        self._survey_bytes += size
        pending.reserved += size

    def _release(self, pending: _Survey, size: int) -> None:
        size = min(size, pending.reserved)
        if size > 0:
            pending.reserved -= size
            self._survey_bytes -= size
            self._survey_budget.set()

    def _deliver_survey_reply(self, raw: bytes) -> None:
        try:
            reply = decode_survey_reply(raw)
        except CorruptEnvelope as exc:
            log.warning("dropped a corrupt survey answer: %s", exc.message)
            return
        pending = self._surveys.get(reply.request_id)
        if pending is None:
            log.debug("dropped an answer to survey %s (unknown or over)", reply.request_id)
            return
        if pending.add(reply.node_id, reply.body):
            self._release(pending, pending.limit)  # received: no longer on its way

    def _on_survey(self, raw: bytes) -> None:
        """Answer a survey request, in the background (bounded)."""
        try:
            request = decode_survey_request(raw)
        except CorruptEnvelope as exc:
            log.warning("dropped a corrupt survey request: %s", exc.message)
            return
        if self._node is None or self._stopping:
            return
        if len(self._answering) >= MAX_SURVEYS_ANSWERING:
            log.warning(
                "node %s is answering %d surveys already: survey %s of node %s is not answered",
                self.node_id,
                len(self._answering),
                request.request_id,
                request.from_node,
            )
            return
        task = asyncio.get_running_loop().create_task(self._answer_survey(request))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _answer_survey(self, request: SurveyRequest) -> None:
        body = await run_surveyor(
            self._surveyor, request.body, request.timeout, self.node_id, request.limit
        )
        reply = encode_survey_reply(SurveyReply(request.request_id, self.node_id, body))
        try:
            await self._survey_redis.publish(self.keys.surveyed(request.from_node), reply)
        except _REDIS_FAULTS as exc:
            log.warning("node %s could not answer a survey: %s", self.node_id, exc)

    # -- heartbeats and the reaper -------------------------------------------------------

    async def _beat(self) -> None:
        pipe = self._redis.pipeline(transaction=False)
        self._stage_beat(pipe)
        await pipe.execute()

    def _stage_beat(self, pipe: Any) -> None:
        pipe.set(self.keys.node(self.node_id), "1", px=int(self.heartbeat_timeout * 1000))
        pipe.sadd(self.keys.nodes, self.node_id)

    async def _heartbeat(self) -> None:
        interval = self.heartbeat_timeout / 3
        while not self._stopping:
            await asyncio.sleep(interval)  # the beat itself: a period, not a synchronisation
            try:
                check = self._redis.pipeline(transaction=False)
                check.exists(self.keys.node(self.node_id))
                check.exists(self.keys.reaped(self.node_id))
                check.exists(self.keys.taken(self.node_id))
                present, reaped, taken = await check.execute()
                missing = not present
                await self._beat()
                if taken or self._foreign_left:
                    self._need_mirror_resync()  # which drops what was taken first
                if missing or reaped:
                    # Redis restarted empty, or we were reaped: write presence again (after
                    # a reaping, without the connections whose end was reported).
                    self._need_rebuild()
                if not self._stopping and (self._reaping is None or self._reaping.done()):
                    # Apart from the beat: a long reap must not let this node's key lapse.
                    self._reaping = asyncio.create_task(self._reap_quietly(interval))
            except _REDIS_FAULTS as exc:
                log.warning("node %s heartbeat failed: %s", self.node_id, exc)
            except Exception:  # the beat must go on, or this node is taken for dead
                log.exception("node %s heartbeat failed", self.node_id)

    async def _reap_quietly(self, interval: float) -> None:
        try:
            await self._reap(interval)
        except _REDIS_FAULTS as exc:
            log.warning("node %s could not reap: %s", self.node_id, exc)
        except Exception:
            log.exception("node %s failed while reaping", self.node_id)

    async def _reap(self, interval: float) -> None:
        """Clean up after nodes whose heartbeat lapsed, one reaper at a time."""
        if asyncio.get_running_loop().time() < self._reap_after:
            return
        lock = await self._redis.set(
            self.keys.reaper, self.node_id, nx=True, px=int(interval * 2000)
        )
        if not lock:
            return
        for raw_id in await self._redis.smembers(self.keys.nodes):
            dead = _text(raw_id)
            if dead == self.node_id or await self._redis.exists(self.keys.node(dead)):
                continue
            if self._store is None and await self._redis.hlen(self.keys.events(dead)):
                continue  # events this node has no queue for: left, listed, to one that has
            if not await self._take_events(dead, int(interval * 2000)):
                return  # it came back, or the lock went to another reaper
            await self._reap_node(dead, mark=True)
            log.warning("node %s reaped the presence of dead node %s", self.node_id, dead)

    async def _reap_node(self, dead: str, *, mark: bool = False) -> int:
        """Drop what node ``dead`` left in Redis, reporting each of its connections once
        (the script only reports a connection it deleted); how many were reported. With
        ``mark``, the reported connections are noted for the node, should it be alive."""
        reported = 0
        for raw_member in await self._redis.smembers(self.keys.node_conns(dead)):
            hub, _, cid = _text(raw_member).partition(_SEP)
            info = await self._scripts["reap"](args=[self.keys.prefix, hub, cid, dead])
            if info:
                reported += 1
                if mark:
                    await self._redis.sadd(self.keys.reaped(dead), raw_member)
                    await self._redis.expire(self.keys.reaped(dead), REAPED_MARK_SECONDS)
                try:
                    self._report_reaped(hub, cid, dead, info)
                except Exception:  # one bad report must not stop the reaping
                    log.exception("could not report connection %s of node %s", cid, dead)
        await self._redis.delete(self.keys.node_conns(dead))
        await self._redis.srem(self.keys.nodes, dead)
        return reported

    def _report_reaped(self, hub: str, cid: str, dead: str, info: Sequence[Any]) -> None:
        if self._node is None:
            return
        user, subprotocol, state = (_text(v) if v is not None else "" for v in info[1:4])
        self._node.reaped(
            ReapedConnection(hub, cid, user or None, subprotocol or None, state, dead)
        )

    def presence(self) -> RedisBackplane:
        """The hub listener that keeps presence in Redis: this backplane."""
        return self

    async def _leave(self) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for hub, cid in list(self._local):
            await self._scripts["reap"](
                args=[self.keys.prefix, hub, cid, self.node_id], client=pipe
            )
        pipe.delete(self.keys.node(self.node_id), self.keys.node_conns(self.node_id))
        await pipe.execute()
        stale = self._store is not None and (self._mirror_resync or bool(self._mirror_ops))
        if not stale and not await self._redis.hlen(self.keys.events(self.node_id)):
            await self._redis.srem(self.keys.nodes, self.node_id)
        # else it stays listed without a heartbeat: a survivor takes its events over
        # (a mirror never brought in step may hold delivered ones: sent again, same ce-id)

    # -- the mirror of queued events (node/ports.EventMirrorPort) --------------------------

    def event_mirror(self) -> RedisBackplane:
        """The mirror of this node's queued events: this backplane."""
        return self

    async def attach(self, store: EventStore) -> None:
        """Beat (a survivor taking this node's events over stops), drop what was taken
        while this node was away, and mirror ``store`` from :meth:`start` on."""
        self._store = store
        self._epoch = store.epoch()
        try:
            await self._beat()
            await self._drop_taken()
        except _REDIS_FAULTS as exc:
            raise ServiceUnavailable(
                f"cannot reach Redis at {_redacted(self.url)}: {exc}"
            ) from None
        try:
            # Before anything is queued here (the previous run's connections reaped at
            # start, to begin with): that run's connected goes before their disconnected.
            await self._adopt_foreign(self.keys.events(self.node_id))
        except _REDIS_FAULTS as exc:
            self._foreign_left = True
            log.warning("node %s will queue its copied events later: %s", self.node_id, exc)

    async def closing(self) -> None:
        """Give the mirror writer one bounded chance to finish (a resync pending after a
        fault included): :meth:`stop` leaves by what the mirror holds."""
        if not any(t.get_name() == "redis-events" and not t.done() for t in self._tasks):
            return
        self._mirror_wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_STOP_TIMEOUT):
                await self.mirror_flushed()

    def queued(self, seq: int, record: bytes) -> None:
        self._mirror_op(seq, record)

    def settled(self, seq: int) -> None:
        self._mirror_op(seq, None)

    def _mirror_op(self, seq: int, record: bytes | None) -> None:
        if self._mirror_resync:
            return  # the whole queue is copied anew
        size = len(record) if record is not None else 0
        if (
            len(self._mirror_ops) >= MIRROR_QUEUE_LIMIT
            or self._mirror_bytes + size > MIRROR_QUEUE_BYTES
        ):
            log.warning("event mirror writes backed up; copying the queue once Redis answers")
            self._need_mirror_resync()
            return
        self._mirror_ops.append((seq, record))
        self._mirror_bytes += size
        self._mirror_wake.set()

    def _need_mirror_resync(self) -> None:
        self._mirror_resync = True
        self._mirror_ops.clear()
        self._mirror_bytes = 0
        self._mirror_wake.set()
        self._mirror_progress.set()

    async def mirror_flushed(self) -> None:
        """Return once the mirror matches every change of the local queue so far (bound
        it with ``asyncio.timeout``)."""
        while True:
            self._mirror_progress.clear()
            if not (self._mirror_resync or self._mirror_ops or self._mirror_busy):
                return
            await self._mirror_progress.wait()

    async def _write_mirror(self) -> None:
        """Write mirror changes in order, pipelined; after a fault copy the queue anew."""
        delay = 0.05
        while True:
            if self._mirror_resync and not self._stopping:
                self._mirror_resync = False
                self._mirror_busy = True
                try:
                    await self._resync_mirror()
                    delay = 0.05
                except Exception as exc:  # Redis, or the queue closing at shutdown
                    log.warning("event mirror not written (%s); retrying", exc)
                    self._need_mirror_resync()
                    await asyncio.sleep(delay)  # a bounded back-off
                    delay = min(delay * 2, _RECONNECT_MAX_DELAY)
                    continue
                finally:
                    self._mirror_busy = False
                    self._mirror_progress.set()
            if not self._mirror_ops:
                if self._stopping:
                    return
                self._mirror_wake.clear()
                await self._mirror_wake.wait()
                continue
            batch = [self._mirror_ops.popleft() for _ in range(min(500, len(self._mirror_ops)))]
            self._mirror_bytes -= sum(len(r) for _, r in batch if r is not None)
            self._mirror_busy = True
            try:
                pipe = self._redis.pipeline(transaction=False)
                key = self.keys.events(self.node_id)
                for seq, record in batch:
                    if record is None:
                        pipe.hdel(key, _field(self._epoch, seq))
                    else:
                        pipe.hset(key, _field(self._epoch, seq), record)
                await pipe.execute()
            except _REDIS_FAULTS as exc:
                log.warning("event mirror write failed (%s); copying the queue anew", exc)
                self._need_mirror_resync()
            finally:
                self._mirror_busy = False
                self._mirror_progress.set()

    async def _drop_taken(self) -> int:
        """Drop from the local queue the events a survivor took over; how many. The mark
        loses only what was dropped (a survivor may be adding to it meanwhile)."""
        if self._store is None:
            return 0
        mark = self.keys.taken(self.node_id)
        members = [_text(m) for m in await self._redis.smembers(mark)]
        if not members:
            return 0
        # Those of another epoch were never in this file (a new one): only the mark goes.
        mine = [p[1] for m in members if (p := _parse_field(m)) and p[0] == self._epoch]
        dropped = self._store.drop(sorted(mine))
        for batch in _chunks(members, 1000):
            await self._redis.srem(mark, *batch)
        log.warning(
            "node %s was taken for dead: %d of its queued events were taken over by another "
            "node and are not sent from here",
            self.node_id,
            dropped,
        )
        return dropped

    async def _resync_mirror(self) -> None:
        """Make the mirror match the local queue: what was taken over goes from the
        queue, what the mirror holds that the queue does not goes from the mirror, what
        the queue holds that the mirror lacks is written. Events the copy holds that the
        queue file never had are queued first."""
        assert self._store is not None
        await self._drop_taken()
        key = self.keys.events(self.node_id)
        await self._adopt_foreign(key)
        fields = [p for f in await self._redis.hkeys(key) if (p := _parse_field(_text(f)))]
        recorded = {seq for epoch, seq in fields if epoch == self._epoch}
        self._mirror_ops.clear()  # the snapshot below replaces them; later ones follow it
        self._mirror_bytes = 0
        local = self._store.pending_seqs()
        wanted = set(local)
        extra = sorted(recorded - wanted)
        for batch in _chunks(extra, 1000):
            await self._redis.hdel(key, *(_field(self._epoch, s) for s in batch))
        missing = [s for s in local if s not in recorded]
        for batch in _chunks(missing, 500):
            records = self._store.records(batch)
            if records:
                await self._redis.hset(key, mapping={_field(self._epoch, s): r for s, r in records})
        if extra or missing:
            log.info(
                "event mirror of node %s: %d written, %d removed",
                self.node_id,
                len(missing),
                len(extra),
            )

    async def _adopt_foreign(self, key: str) -> None:
        """Queue the copied events of another epoch (this node id's earlier queue file,
        before it started with a new or empty one), in their order, removing each from
        the copy once queued. When the queue cannot take them all now (its file failing,
        or full) the rest stay in the copy, and a heartbeat tries again."""
        self._foreign_left = False
        assert self._store is not None
        fields = [p for f in await self._redis.hkeys(key) if (p := _parse_field(_text(f)))]
        foreign = [_field(e, s) for e, s in sorted(fields) if e != self._epoch]
        for batch in _chunks(foreign, TAKEOVER_BATCH):
            values = await self._redis.hmget(key, list(batch))
            found = [(f, v) for f, v in zip(batch, values, strict=True) if v is not None]
            try:
                adopted = self._store.adopt([_raw(v) for _, v in found])  # durable first
            except RuntimeError:  # the queue closed: the node is stopping
                self._foreign_left = True
                return
            queued, present = {f for f, _ in found[: len(adopted)]}, {f for f, _ in found}
            done = [f for f in batch if f in queued or f not in present]
            if done:
                await self._redis.hdel(key, *done)
            if len(adopted) < len(found):
                self._foreign_left = True
                log.warning(
                    "node %s cannot queue the events its copy in Redis holds of its earlier "
                    "queue file now; they wait there",
                    self.node_id,
                )
                return
        if foreign:
            log.warning(
                "node %s found %d events in its copy in Redis that its queue file does not "
                "have (a new data_dir?): queued again",
                self.node_id,
                len(foreign),
            )

    async def _take_events(self, dead: str, lock_ms: int) -> bool:
        """Queue here, in their order, the events dead node ``dead`` left in its mirror;
        False if it came back or the reaper lock was lost meanwhile (the rest stay)."""
        if self._store is None:
            return True  # only for a node whose copy is empty (see _reap)
        key, mark, beat = self.keys.events(dead), self.keys.taken(dead), self.keys.node(dead)
        parsed = sorted(p for f in await self._redis.hkeys(key) if (p := _parse_field(_text(f))))
        fields = [_field(epoch, seq) for epoch, seq in parsed]  # an older file's first
        taken = 0
        for batch in _chunks(fields, TAKEOVER_BATCH):
            still = await self._scripts["still_reaping"](
                keys=[self.keys.reaper, beat], args=[self.node_id, lock_ms]
            )
            if not still:
                log.warning("node %s stopped taking over the events of node %s", self.node_id, dead)
                return False
            values = await self._redis.hmget(key, list(batch))
            found = [(f, v) for f, v in zip(batch, values, strict=True) if v is not None]
            if not found:
                continue
            try:
                # Durable here first, held (not sent) until the script below says they are
                # this node's: were it refused, they would go out from two nodes.
                adopted = self._store.adopt([_raw(v) for _, v in found], hold=True)
            except RuntimeError as exc:  # this node's queue closed: it is stopping
                log.info("node %s leaves the events of node %s: %s", self.node_id, dead, exc)
                return False
            short = len(adopted) < len(found)
            found = found[: len(adopted)]  # the rest are not queued here: they stay there
            if not found:
                log.warning(
                    "node %s cannot queue the events of node %s now; they wait in Redis",
                    self.node_id,
                    dead,
                )
                return False
            try:
                took = await self._scripts["take"](
                    keys=[key, mark, beat], args=[TAKEN_MARK_SECONDS, *(s for s, _ in found)]
                )
            except BaseException:  # taken or not, unknown: sent from here (at least once)
                self._store.release([mine for mine in adopted if mine])
                raise
            done = {_text(f) for f in took} if isinstance(took, list) else set()
            # Those not taken (it came back, or they went meanwhile) are not ours to send.
            pairs = list(zip(found, adopted, strict=True))
            self._store.drop([m for (s, _), m in pairs if m and s not in done], handed_back=True)
            self._store.release([m for (s, _), m in pairs if m and s in done])
            taken += len(done)
            if not isinstance(took, list) or short:
                return False
        if taken:
            log.warning(
                "node %s took over %d queued events of dead node %s", self.node_id, taken, dead
            )
        return True


def _raw(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _field(epoch: str, seq: int) -> str:
    """A mirrored event's field: its queue file's epoch and its ``seq`` there."""
    return f"{epoch}:{seq}"


def _parse_field(field: str) -> tuple[str, int] | None:
    """(epoch, seq) of a mirror field; a bare ``seq`` (written before epochs) is of
    epoch "" (older than any); None for anything else."""
    epoch, _, seq = field.rpartition(":")
    return (epoch, int(seq)) if seq.isdigit() else None


def _chunks(items: Sequence[_T], size: int) -> Iterable[Sequence[_T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclass(slots=True)
class _Pending:
    """A handover this node asked for."""

    adopt: Callable[[SessionState], None]
    future: asyncio.Future[str | None]
    hub: str
    connection_id: str
    created: float
    outcome: SessionState | str | None = None
    arrived: bool = False
    """The owner's answer came (``outcome``)."""
    gave_up: bool = False
    """The requester stopped waiting (a late state is still adopted)."""


@dataclass(slots=True)
class _Survey:
    """A survey this node is waiting on: the answers so far, by node."""

    done: asyncio.Future[None]
    """Set once every expected node answered."""
    answers: dict[str, bytes | None]
    expected: frozenset[str] | None = None
    """The live nodes, once the request is published (answers may arrive before)."""
    limit: int = 0
    """The answer limit the request carries (bytes)."""
    reserved: int = 0
    """Answer bytes still reserved for it in ``SURVEY_BYTES_IN_FLIGHT``."""

    def expect(self, nodes: Iterable[str]) -> frozenset[str]:
        self.expected = frozenset(nodes)
        for node in set(self.answers) - self.expected:
            del self.answers[node]  # not live: it is not in the result
        self._check()
        return self.expected

    def add(self, node: str, body: bytes | None) -> bool:
        """Count ``node``'s answer; whether it was the first from that node."""
        if node in self.answers:
            return False  # the first answer counts
        if self.expected is None:
            if len(self.answers) >= MAX_SURVEY_NODES:
                return True
        elif node not in self.expected:
            return True  # received all the same (a node subscribed without a heartbeat)
        self.answers[node] = body
        self._check()
        return True

    def _check(self) -> None:
        if (
            self.expected is not None
            and self.expected <= self.answers.keys()
            and not self.done.done()
        ):
            self.done.set_result(None)


def _client(url: str, name: str | None = None) -> aioredis.Redis:
    """A client to Redis at ``url`` (named ``name`` in ``CLIENT LIST``): no retries of
    its own, bounded connect and read times."""
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        health_check_interval=5,
        retry=Retry(NoBackoff(), 0),
        client_name=name,
    )


def _token_hash(token: str) -> str:
    """What presence keeps of a reconnection token: enough to check one, not to use it."""
    return hashlib.sha256(token.encode()).hexdigest()


def _presence_target(
    command: Command,
) -> tuple[str, str, str, frozenset[str], tuple[str, ...]] | None:
    """What a command changes in presence, if anything: (scope, id, action, excluded,
    groups). Filtered and hub-wide targets are then resolved by :meth:`_resolve`."""
    match command:
        case Close():
            return (command.target.scope.value, command.target.id, "close", command.excluded, ())
        case ChangeGroup():
            if command.target.scope is Scope.GROUP and command.action is GroupAction.ADD:
                return None  # no REST operation adds a group's members to groups
            return (
                command.target.scope.value,
                command.target.id,
                command.action.value,
                frozenset(),
                command.groups,
            )
        case Send() | ChangePermission() | Handover():
            return None
        case _:
            assert_never(command)


def _perm_field(permission: str, group: str) -> str:
    return f"{Permission.parse(permission).value}{_SEP}{group}"


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _unavailable(exc: Exception) -> str:
    log.warning("Redis failed: %s", exc)
    return "The backplane (Redis) is unavailable: the operation could not reach every node."
