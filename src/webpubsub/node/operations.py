"""One typed method per data-plane operation.

The REST handlers, the CLI and tests all go through :class:`Operations`; it
validates names, turns each operation into a backplane command or query, and so
acts on every node's connections, not only the local ones.
"""

from __future__ import annotations

from collections.abc import Iterable

from webpubsub.backplane.base import Backplane
from webpubsub.core.permissions import Permission
from webpubsub.errors import NotFound
from webpubsub.protocol.backplane import (
    ChangeGroup,
    ChangePermission,
    Close,
    Exists,
    GroupAction,
    GroupMember,
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
    validate_user_id,
)
from webpubsub.protocol.payload import Payload

DEFAULT_CLOSE_REASON = "The connection was closed by the server."


class Operations:
    def __init__(self, backplane: Backplane) -> None:
        self._bp = backplane

    # -- sends (202: fire-and-forget, also when nobody is there) ----------------------

    async def send_to_all(
        self, hub: str, payload: Payload, *, excluded: Iterable[str] = ()
    ) -> None:
        await self._bp.publish(
            Send(hub_key(hub), Target.all(), DataMessage(payload), frozenset(excluded))
        )

    async def send_to_user(self, hub: str, user_id: str, payload: Payload) -> None:
        await self._bp.publish(
            Send(hub_key(hub), Target.user(validate_user_id(user_id)), DataMessage(payload))
        )

    async def send_to_group(
        self, hub: str, group: str, payload: Payload, *, excluded: Iterable[str] = ()
    ) -> None:
        group = validate_group(group)
        message = DataMessage(payload, Origin.GROUP, group)
        await self._bp.publish(
            Send(hub_key(hub), Target.group(group), message, frozenset(excluded))
        )

    async def send_to_connection(self, hub: str, connection_id: str, payload: Payload) -> None:
        target = Target.connection(validate_connection_id(connection_id))
        await self._bp.publish(Send(hub_key(hub), target, DataMessage(payload)))

    # -- groups -----------------------------------------------------------------------

    async def add_connection_to_group(self, hub: str, group: str, connection_id: str) -> None:
        """Raises :class:`NotFound` when the connection does not exist."""
        key, group = hub_key(hub), validate_group(group)
        target = Target.connection(validate_connection_id(connection_id))
        if not await self._exists(key, target):
            raise NotFound(f"Connection {connection_id!r} does not exist.")
        await self._bp.publish(ChangeGroup(key, target, GroupAction.ADD, group))

    async def remove_connection_from_group(self, hub: str, group: str, connection_id: str) -> None:
        target = Target.connection(validate_connection_id(connection_id))
        await self._bp.publish(
            ChangeGroup(hub_key(hub), target, GroupAction.REMOVE, validate_group(group))
        )

    async def remove_connection_from_all_groups(self, hub: str, connection_id: str) -> None:
        target = Target.connection(validate_connection_id(connection_id))
        await self._bp.publish(ChangeGroup(hub_key(hub), target, GroupAction.REMOVE_ALL))

    async def add_user_to_group(self, hub: str, group: str, user_id: str) -> None:
        """Adds the user's current connections (future ones are not added)."""
        target = Target.user(validate_user_id(user_id))
        await self._bp.publish(
            ChangeGroup(hub_key(hub), target, GroupAction.ADD, validate_group(group))
        )

    async def remove_user_from_group(self, hub: str, group: str, user_id: str) -> None:
        target = Target.user(validate_user_id(user_id))
        await self._bp.publish(
            ChangeGroup(hub_key(hub), target, GroupAction.REMOVE, validate_group(group))
        )

    async def remove_user_from_all_groups(self, hub: str, user_id: str) -> None:
        target = Target.user(validate_user_id(user_id))
        await self._bp.publish(ChangeGroup(hub_key(hub), target, GroupAction.REMOVE_ALL))

    async def list_group(self, hub: str, group: str) -> list[GroupMember]:
        answers = await self._bp.gather(ListGroup(hub_key(hub), validate_group(group)))
        members: list[GroupMember] = []
        for answer in answers:
            if isinstance(answer, tuple):
                members.extend(answer)
        return members

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
        perm = Permission.parse(permission)
        query = HasPermission(
            hub_key(hub),
            validate_connection_id(connection_id),
            perm.value,
            validate_group(group) if group is not None else None,
        )
        return any(answer is True for answer in await self._bp.gather(query))

    async def _change_permission(
        self, hub: str, permission: str, connection_id: str, group: str | None, *, grant: bool
    ) -> None:
        perm = Permission.parse(permission)
        key = hub_key(hub)
        cid = validate_connection_id(connection_id)
        if not await self._exists(key, Target.connection(cid)):
            raise NotFound(f"Connection {connection_id!r} does not exist.")
        target_group = validate_group(group) if group is not None else None
        await self._bp.publish(ChangePermission(key, cid, perm.value, grant, target_group))

    async def _exists(self, key: str, target: Target) -> bool:
        return any(answer is True for answer in await self._bp.gather(Exists(key, target)))
