"""The embedded backplane: nodes in one process, joined through a shared bus.

With one node (the default) a command is a direct call.  Several nodes built on
the same :class:`MemoryBus` behave like a cluster, which tests use to prove that
operations reach clients connected to another node.  With ``wire=True`` every
command, query and answer goes through the wire codec a networked backplane uses
(``protocol/backplane.py``), so the contract suite proves the codec too.
"""

from __future__ import annotations

from webpubsub.backplane.base import Backplane, NodeEndpoint
from webpubsub.protocol.backplane import (
    Answer,
    Command,
    Query,
    decode_answer,
    decode_command,
    decode_query,
    encode_answer,
    encode_command,
    encode_query,
)


class MemoryBus:
    def __init__(self) -> None:
        self.nodes: list[NodeEndpoint] = []


class MemoryBackplane(Backplane):
    def __init__(self, bus: MemoryBus | None = None, *, wire: bool = False) -> None:
        self.bus = bus if bus is not None else MemoryBus()
        self._node: NodeEndpoint | None = None
        self._wire = wire

    async def start(self, node: NodeEndpoint) -> None:
        self._node = node
        self.bus.nodes.append(node)

    async def stop(self) -> None:
        if self._node is not None and self._node in self.bus.nodes:
            self.bus.nodes.remove(self._node)
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
