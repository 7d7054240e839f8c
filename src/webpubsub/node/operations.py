"""One typed method per data-plane operation.

The REST handlers, the CLI and tests all go through :class:`Operations`; it
validates names, turns each operation into a backplane command or query, and so
acts on every node's connections, not only the local ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from webpubsub.core.permissions import Permission
from webpubsub.core.settings import HubSettings
from webpubsub.errors import BadRequest, InvalidParameter, NotFound
from webpubsub.node.ports import BackplanePort
from webpubsub.protocol.backplane import (
    ChangeGroup,
    ChangePermission,
    Close,
    Exists,
    GroupAction,
    GroupMember,
    GroupRoom,
    HasPermission,
    ListGroup,
    Send,
    Target,
)
from webpubsub.protocol.frames import DataMessage, Origin
from webpubsub.protocol.names import (
    hub_key,
    validate_connection_id,
    validate_group,
    validate_hub,
    validate_user_id,
)
from webpubsub.protocol.odata import parse_filter
from webpubsub.protocol.payload import Payload
from webpubsub.protocol.tokens import issue_client_token

DEFAULT_CLOSE_REASON = "The connection was closed by the server."


_CLIENT_PATHS = {
    "default": "/client/hubs/",
    "mqtt": "/clients/mqtt/hubs/",
    "socketio": "/clients/socketio/hubs/",
}


def _group(name: str | None) -> str:
    """The ``targetName`` of a permission operation: both permissions are per group, so
    Azure requires it (400 without one)."""
    if name is None:
        raise BadRequest(
            "Invalid group name. Valid group name should be in between 1 and 1024 characters long.",
            target="Request",
        )
    return validate_group(name)


def _checked_filter(text: str) -> str:
    """The filter text after checking that it parses (400 with its position if not)."""
    if text:
        parse_filter(text)
    return text


class Operations:
    def __init__(
        self,
        backplane: BackplanePort,
        *,
        keys: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
        hub_settings: Callable[[str], HubSettings] = HubSettings,
    ) -> None:
        self._bp = backplane
        self._keys = tuple(keys)
        self._clock = clock
        self._hub_settings = hub_settings

    # -- sends (202: fire-and-forget, also when nobody is there) ----------------------

    async def send_to_all(
        self, hub: str, payload: Payload, *, excluded: Iterable[str] = (), filter: str = ""
    ) -> None:
        await self._bp.publish(
            Send(
                hub_key(hub),
                Target.all(),
                DataMessage(payload),
                frozenset(excluded),
                _checked_filter(filter),
            )
        )

    async def send_to_user(
        self, hub: str, user_id: str, payload: Payload, *, filter: str = ""
    ) -> None:
        target = Target.user(validate_user_id(user_id))
        await self._bp.publish(
            Send(hub_key(hub), target, DataMessage(payload), filter=_checked_filter(filter))
        )

    async def send_to_group(
        self,
        hub: str,
        group: str,
        payload: Payload,
        *,
        excluded: Iterable[str] = (),
        filter: str = "",
    ) -> None:
        group = validate_group(group)
        message = DataMessage(payload, Origin.GROUP, group)
        await self._bp.publish(
            Send(
                hub_key(hub),
                Target.group(group),
                message,
                frozenset(excluded),
                _checked_filter(filter),
            )
        )

    async def send_to_connection(self, hub: str, connection_id: str, payload: Payload) -> None:
        target = Target.connection(validate_connection_id(connection_id))
        await self._bp.publish(Send(hub_key(hub), target, DataMessage(payload)))

    # -- groups -----------------------------------------------------------------------

    async def add_connection_to_group(self, hub: str, group: str, connection_id: str) -> None:
        """Raises :class:`NotFound` when the connection does not exist, :class:`BadRequest`
        when it is in as many groups as a connection may be (and not in this one)."""
        key, group = hub_key(hub), validate_group(group)
        target = Target.connection(validate_connection_id(connection_id))
        limit = self._hub_settings(hub).max_groups_per_connection
        answers = await self._bp.gather(GroupRoom(key, connection_id, group, limit))
        if False in answers:
            raise BadRequest(
                f"Connection `{connection_id}` is in {limit} groups, the most a connection "
                "may join.",
                target="Connection",
            )
        if True not in answers:
            raise NotFound.of("Connection", connection_id, "Error.Connection.NotExisted")
        await self._bp.publish(ChangeGroup(key, target, GroupAction.ADD, (group,)))

    async def remove_connection_from_group(self, hub: str, group: str, connection_id: str) -> None:
        target = Target.connection(validate_connection_id(connection_id))
        await self._bp.publish(
            ChangeGroup(hub_key(hub), target, GroupAction.REMOVE, (validate_group(group),))
        )

    async def remove_connection_from_all_groups(self, hub: str, connection_id: str) -> None:
        target = Target.connection(validate_connection_id(connection_id))
        await self._bp.publish(ChangeGroup(hub_key(hub), target, GroupAction.REMOVE_ALL))

    async def add_user_to_group(self, hub: str, group: str, user_id: str) -> None:
        """Adds the user's current connections (future ones are not added).

        Raises :class:`NotFound` when the user has no connection, as Azure does.
        """
        key, group = hub_key(hub), validate_group(group)
        target = Target.user(validate_user_id(user_id))
        if not await self._exists(key, target):
            raise NotFound.of("User", user_id, "Warning.User.NotExisted")
        await self._bp.publish(ChangeGroup(key, target, GroupAction.ADD, (group,)))

    async def remove_user_from_group(self, hub: str, group: str, user_id: str) -> None:
        target = Target.user(validate_user_id(user_id))
        await self._bp.publish(
            ChangeGroup(hub_key(hub), target, GroupAction.REMOVE, (validate_group(group),))
        )

    async def remove_user_from_all_groups(self, hub: str, user_id: str) -> None:
        target = Target.user(validate_user_id(user_id))
        await self._bp.publish(ChangeGroup(hub_key(hub), target, GroupAction.REMOVE_ALL))

    async def add_connections_to_groups(
        self, hub: str, groups: Sequence[str], *, filter: str = ""
    ) -> None:
        """Add every connection matching ``filter`` (all when empty) to every group."""
        await self._change_groups(hub, groups, filter, GroupAction.ADD)

    async def remove_connections_from_groups(
        self, hub: str, groups: Sequence[str], *, filter: str = ""
    ) -> None:
        await self._change_groups(hub, groups, filter, GroupAction.REMOVE)

    async def _change_groups(
        self, hub: str, groups: Sequence[str], filter: str, action: GroupAction
    ) -> None:
        if not groups:
            raise InvalidParameter("'groups' must list at least one group.", target="groups")
        checked = tuple(dict.fromkeys(validate_group(g) for g in groups))
        await self._bp.publish(
            ChangeGroup(hub_key(hub), Target.all(), action, checked, _checked_filter(filter))
        )

    async def list_group(self, hub: str, group: str) -> list[GroupMember]:
        """Every member of ``group`` on every node, ordered by connection id."""
        answers = await self._bp.gather(ListGroup(hub_key(hub), validate_group(group)))
        members: list[GroupMember] = []
        for answer in answers:
            if isinstance(answer, tuple):
                members.extend(answer)
        members.sort(key=lambda m: m.connection_id)
        return members

    # -- tokens -----------------------------------------------------------------------

    def generate_client_token(
        self,
        hub: str,
        *,
        endpoint: str,
        user_id: str | None = None,
        roles: Sequence[str] = (),
        groups: Sequence[str] = (),
        minutes_to_expire: int = 60,
        client_type: str = "Default",
        socket_io: bool = True,
    ) -> str:
        """A client access token for ``hub``, as the SDKs sign it.

        ``socket_io`` is whether the API version knows the ``SocketIO`` client type
        (2024-12-01 and later).
        """
        if minutes_to_expire < 1:
            raise InvalidParameter("minutesToExpire must be at least 1.", target="minutesToExpire")
        path = _CLIENT_PATHS.get(client_type.lower())
        if path is None or (client_type.lower() == "socketio" and not socket_io):
            # ASP.NET's model binding wording, as Azure answers it.
            raise InvalidParameter(f"The value '{client_type}' is not valid.", target="clientType")
        validate_hub(hub)
        return issue_client_token(
            self._keys[0],
            audience=f"{endpoint.rstrip('/').lower()}{path}{hub}",
            now=self._clock(),
            ttl_seconds=minutes_to_expire * 60,
            user_id=validate_user_id(user_id) if user_id else None,
            roles=roles,
            groups=[validate_group(g) for g in groups],
        )

    # -- closing ----------------------------------------------------------------------

    async def close_connection(self, hub: str, connection_id: str, reason: str = "") -> None:
        target = Target.connection(validate_connection_id(connection_id))
        await self._bp.publish(Close(hub_key(hub), target, reason or DEFAULT_CLOSE_REASON))

    async def close_all_connections(
        self, hub: str, *, excluded: Iterable[str] = (), reason: str = ""
    ) -> None:
        await self._bp.publish(
            Close(hub_key(hub), Target.all(), reason or DEFAULT_CLOSE_REASON, frozenset(excluded))
        )

    async def close_user_connections(
        self, hub: str, user_id: str, *, excluded: Iterable[str] = (), reason: str = ""
    ) -> None:
        target = Target.user(validate_user_id(user_id))
        await self._bp.publish(
            Close(hub_key(hub), target, reason or DEFAULT_CLOSE_REASON, frozenset(excluded))
        )

    async def close_group_connections(
        self, hub: str, group: str, *, excluded: Iterable[str] = (), reason: str = ""
    ) -> None:
        target = Target.group(validate_group(group))
        await self._bp.publish(
            Close(hub_key(hub), target, reason or DEFAULT_CLOSE_REASON, frozenset(excluded))
        )

    # -- existence --------------------------------------------------------------------

    async def connection_exists(self, hub: str, connection_id: str) -> bool:
        return await self._exists(
            hub_key(hub), Target.connection(validate_connection_id(connection_id))
        )

    async def user_exists(self, hub: str, user_id: str) -> bool:
        return await self._exists(hub_key(hub), Target.user(validate_user_id(user_id)))

    async def group_exists(self, hub: str, group: str) -> bool:
        return await self._exists(hub_key(hub), Target.group(validate_group(group)))

    # -- permissions ------------------------------------------------------------------

    async def grant_permission(
        self, hub: str, permission: str, connection_id: str, group: str | None = None
    ) -> None:
        await self._change_permission(hub, permission, connection_id, group, grant=True)

    async def revoke_permission(
        self, hub: str, permission: str, connection_id: str, group: str | None = None
    ) -> None:
        await self._change_permission(hub, permission, connection_id, group, grant=False)

    async def has_permission(
        self, hub: str, permission: str, connection_id: str, group: str | None = None
    ) -> bool:
        """Whether the connection exists and holds the permission for the group."""
        perm = Permission.parse(permission)
        key, cid, target_group = hub_key(hub), validate_connection_id(connection_id), _group(group)
        query = HasPermission(key, cid, perm.value, target_group)
        return any(answer is True for answer in await self._bp.gather(query))

    async def _change_permission(
        self, hub: str, permission: str, connection_id: str, group: str | None, *, grant: bool
    ) -> None:
        """Grant: :class:`NotFound` for an unknown connection. Revoke: nothing to do."""
        perm = Permission.parse(permission)
        key, cid, target_group = hub_key(hub), validate_connection_id(connection_id), _group(group)
        if not await self._exists(key, Target.connection(cid)):
            if not grant:
                return
            raise NotFound.of("Connection", connection_id, "Info.Connection.NotExisted")
        await self._bp.publish(ChangePermission(key, cid, perm.value, grant, target_group))

    async def _exists(self, key: str, target: Target) -> bool:
        return any(answer is True for answer in await self._bp.gather(Exists(key, target)))
