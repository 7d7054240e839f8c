"""The embedded backplane: nodes in one process, joined through a shared bus.

With one node (the default) a command is a direct call.  Several nodes built on
the same :class:`MemoryBus` behave like a cluster, which tests use to prove that
operations reach clients connected to another node.  With ``wire=True`` every
command, query and answer goes through the wire codec a networked backplane uses
(``protocol/backplane.py``), so the contract suite proves the codec too.  A survey
asks every started backplane on the bus, concurrently, in-process.
"""

from __future__ import annotations

import asyncio
import secrets

from webpubsub.backplane.base import Backplane, NodeEndpoint, check_survey, run_surveyor
from webpubsub.protocol.backplane import (
    Answer,
    Command,
    Query,
    SurveyReply,
    SurveyRequest,
    decode_answer,
    decode_command,
    decode_query,
    decode_survey_reply,
    decode_survey_request,
    encode_answer,
    encode_command,
    encode_query,
    encode_survey_reply,
    encode_survey_request,
)


class MemoryBus:
    def __init__(self) -> None:
        self.nodes: list[NodeEndpoint] = []
        self.planes: list[MemoryBackplane] = []
        """The started backplanes, in start order: who answers a survey."""


class MemoryBackplane(Backplane):
    def __init__(self, bus: MemoryBus | None = None, *, wire: bool = False) -> None:
        self.bus = bus if bus is not None else MemoryBus()
        self._node: NodeEndpoint | None = None
        self._wire = wire
        self._surveying = 0

    async def start(self, node: NodeEndpoint) -> None:
        self._node = node
        self.bus.nodes.append(node)
        self.bus.planes.append(self)

    async def stop(self) -> None:
        if self._node is not None and self._node in self.bus.nodes:
            self.bus.nodes.remove(self._node)
        if self in self.bus.planes:
            self.bus.planes.remove(self)
        self._node = None

    async def publish(self, command: Command) -> None:
        if self._wire:
            raw = encode_command(command)
            for node in list(self.bus.nodes):
                node.apply(decode_command(raw))
            return
        for node in list(self.bus.nodes):
            node.apply(command)

    async def gather(self, query: Query) -> list[Answer]:
        if self._wire:
            raw = encode_query(query)
            return [
                decode_answer(encode_answer(node.answer(decode_query(raw))))
                for node in list(self.bus.nodes)
            ]
        return [node.answer(query) for node in list(self.bus.nodes)]

    # -- surveys -------------------------------------------------------------------------

    async def survey(
        self,
        request: bytes,
        *,
        timeout: float = 1.0,  # noqa: ASYNC109 (the answerers' time too; a partial result after)
    ) -> list[tuple[str, bytes | None]]:
        check_survey(request, timeout, self._surveying)
        asked = SurveyRequest(
            secrets.token_hex(8), self._node.node_id if self._node else "", timeout, request
        )
        asking = [
            (plane._node.node_id, asyncio.create_task(plane._answer(asked, plane._node.node_id)))
            for plane in list(self.bus.planes)
            if plane._node is not None
        ]
        self._surveying += 1
        try:
            # Each answerer is cancelled at the timeout already; this bounds one that
            # does not let itself be cancelled.
            if asking:
                await asyncio.wait([task for _, task in asking], timeout=timeout)
        finally:
            self._surveying -= 1
            for _, task in asking:
                task.cancel()
        return sorted(((node, _body(task)) for node, task in asking), key=lambda pair: pair[0])

    async def _answer(self, request: SurveyRequest, node_id: str) -> SurveyReply:
        """This node's reply (through the wire codec both ways with ``wire=True``)."""
        if self._wire:
            request = decode_survey_request(encode_survey_request(request))
        body = await run_surveyor(self._surveyor, request.body, request.timeout, node_id)
        reply = SurveyReply(request.request_id, node_id, body)
        if self._wire:
            return decode_survey_reply(encode_survey_reply(reply))
        return reply


def _body(task: asyncio.Task[SurveyReply]) -> bytes | None:
    """The answer a finished task got; None for one still running (cancelled now)."""
    if not task.done() or task.cancelled() or task.exception() is not None:
        return None
    return task.result().body
