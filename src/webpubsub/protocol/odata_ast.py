"""The OData filter's expression tree: typed nodes, evaluation and printing.

:mod:`webpubsub.protocol.odata` parses filter text into these frozen nodes; each node
evaluates itself against a :class:`FilterSubject` (one connection) with the null and
type rules described there, and :func:`render` prints a tree back as canonical text.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

INT_MIN, INT_MAX = -(2**63), 2**63 - 1

Value = str | int | bool | frozenset[str] | None
"""What an expression evaluates to; ``None`` is the OData null."""


@dataclass(frozen=True, slots=True)
class FilterSubject:
    """The properties of one connection a filter is evaluated against."""

    connection_id: str
    user_id: str | None
    groups: frozenset[str]
    protocol: str | None = None
    """The connection's subprotocol (``protocol`` identifier, an emulator extension)."""


class Type(enum.Enum):
    """Static type of an expression."""

    STRING = "a string"
    INT = "an integer"
    BOOL = "a boolean"
    NULL = "null"
    COLLECTION = "a collection"


class CompareOp(enum.StrEnum):
    EQ = "eq"
    NE = "ne"
    GT = "gt"
    GE = "ge"
    LT = "lt"
    LE = "le"


IDENTIFIERS = {
    "userid": "userId",
    "connectionid": "connectionId",
    "groups": "groups",
    "protocol": "protocol",
}
"""Lower-cased identifier → canonical spelling."""


# --- the tree ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Literal:
    value: str | int | bool | None

    @property
    def type(self) -> Type:
        if self.value is None:
            return Type.NULL
        if isinstance(self.value, bool):
            return Type.BOOL
        return Type.INT if isinstance(self.value, int) else Type.STRING

    def evaluate(self, subject: FilterSubject) -> Value:
        return self.value


@dataclass(frozen=True, slots=True)
class Identifier:
    name: str
    """Canonical spelling: ``userId``, ``connectionId``, ``groups`` or ``protocol``."""

    @property
    def type(self) -> Type:
        return Type.COLLECTION if self.name == "groups" else Type.STRING

    def evaluate(self, subject: FilterSubject) -> Value:
        name = self.name
        if name == "userId":
            return subject.user_id
        if name == "groups":
            return subject.groups
        if name == "connectionId":
            return subject.connection_id
        return subject.protocol


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    """Lower-case function name."""
    args: tuple[Expr, ...]

    @property
    def type(self) -> Type:
        return FUNCTIONS[self.name].result

    def evaluate(self, subject: FilterSubject) -> Value:
        values: list[Value] = []
        for arg in self.args:
            value = arg.evaluate(subject)
            if value is None:
                return None
            values.append(value)
        return FUNCTIONS[self.name].impl(*values)


@dataclass(frozen=True, slots=True)
class Comparison:
    op: CompareOp
    left: Expr
    right: Expr

    @property
    def type(self) -> Type:
        return Type.BOOL

    def evaluate(self, subject: FilterSubject) -> Value:
        return _compare(self.op, self.left.evaluate(subject), self.right.evaluate(subject))


@dataclass(frozen=True, slots=True)
class InCollection:
    """``item in groups``."""

    item: Expr
    collection: Expr

    @property
    def type(self) -> Type:
        return Type.BOOL

    def evaluate(self, subject: FilterSubject) -> Value:
        item = self.item.evaluate(subject)
        collection = self.collection.evaluate(subject)
        return isinstance(item, str) and isinstance(collection, frozenset) and item in collection


@dataclass(frozen=True, slots=True)
class InList:
    """``item in (literal, ...)``: true when ``item eq`` one of the literals."""

    item: Expr
    values: tuple[Literal, ...]

    @property
    def type(self) -> Type:
        return Type.BOOL

    def evaluate(self, subject: FilterSubject) -> Value:
        item = self.item.evaluate(subject)
        return any(_compare(CompareOp.EQ, item, literal.value) for literal in self.values)


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr

    @property
    def type(self) -> Type:
        return Type.BOOL

    def evaluate(self, subject: FilterSubject) -> Value:
        value = self.operand.evaluate(subject)
        return None if value is None else not value


@dataclass(frozen=True, slots=True)
class And:
    operands: tuple[Expr, ...]

    @property
    def type(self) -> Type:
        return Type.BOOL

    def evaluate(self, subject: FilterSubject) -> Value:
        result: bool | None = True
        for operand in self.operands:
            value = operand.evaluate(subject)
            if value is False:
                return False
            if value is None:
                result = None
        return result


@dataclass(frozen=True, slots=True)
class Or:
    operands: tuple[Expr, ...]

    @property
    def type(self) -> Type:
        return Type.BOOL

    def evaluate(self, subject: FilterSubject) -> Value:
        result: bool | None = False
        for operand in self.operands:
            value = operand.evaluate(subject)
            if value is True:
                return True
            if value is None:
                result = None
        return result


Expr: TypeAlias = Literal | Identifier | Call | Comparison | InCollection | InList | Not | And | Or


def _compare(op: CompareOp, left: Value, right: Value) -> bool:
    if left is None or right is None:
        if op is CompareOp.EQ:
            return left is None and right is None
        if op is CompareOp.NE:
            return left is not None or right is not None
        return False
    if type(left) is not type(right) or isinstance(left, frozenset):
        return False  # operands of different types never compare
    return _OPERATORS[op](left, right)


_OPERATORS: dict[CompareOp, Callable[[Any, Any], bool]] = {
    CompareOp.EQ: operator.eq,
    CompareOp.NE: operator.ne,
    CompareOp.GT: operator.gt,
    CompareOp.GE: operator.ge,
    CompareOp.LT: operator.lt,
    CompareOp.LE: operator.le,
}
COMPARE_WORDS = frozenset(op.value for op in CompareOp)


# --- functions ---------------------------------------------------------------------


def _substring(text: str, start: int, length: int | None = None) -> str:
    rest = text[max(start, 0) :]
    return rest if length is None else rest[: max(length, 0)]


@dataclass(frozen=True, slots=True)
class Function:
    signatures: tuple[tuple[Type, ...], ...]
    result: Type
    impl: Callable[..., Value]


_S, _I = Type.STRING, Type.INT
FUNCTIONS: dict[str, Function] = {
    "tolower": Function(((_S,),), _S, str.lower),
    "toupper": Function(((_S,),), _S, str.upper),
    "trim": Function(((_S,),), _S, str.strip),
    "substring": Function(((_S, _I), (_S, _I, _I)), _S, _substring),
    "concat": Function(((_S, _S),), _S, lambda a, b: a + b),
    "indexof": Function(((_S, _S),), _I, str.find),
    "length": Function(((_S,), (Type.COLLECTION,)), _I, len),
    "startswith": Function(((_S, _S),), Type.BOOL, str.startswith),
    "endswith": Function(((_S, _S),), Type.BOOL, str.endswith),
    "contains": Function(((_S, _S),), Type.BOOL, lambda s, t: t in s),
}


# --- rendering ---------------------------------------------------------------------

_LEVEL_OR, _LEVEL_AND, _LEVEL_COMPARE, _LEVEL_UNARY, _LEVEL_PRIMARY = range(5)


def _level(expr: Expr) -> int:
    if isinstance(expr, Or):
        return _LEVEL_OR
    if isinstance(expr, And):
        return _LEVEL_AND
    if isinstance(expr, Comparison | InCollection | InList):
        return _LEVEL_COMPARE
    return _LEVEL_UNARY if isinstance(expr, Not) else _LEVEL_PRIMARY


def _render_literal(value: str | int | bool | None) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def render(expr: Expr) -> str:
    """Canonical filter text of ``expr``; parsing it gives back an equal tree."""
    return _render(expr, _LEVEL_OR)


def _render(expr: Expr, min_level: int) -> str:
    if _level(expr) < min_level:
        return "(" + _render(expr, _LEVEL_OR) + ")"
    if isinstance(expr, Literal):
        return _render_literal(expr.value)
    if isinstance(expr, Identifier):
        return expr.name
    if isinstance(expr, Call):
        return expr.name + "(" + ", ".join(_render(a, _LEVEL_OR) for a in expr.args) + ")"
    if isinstance(expr, Comparison):
        left, right = _render(expr.left, _LEVEL_UNARY), _render(expr.right, _LEVEL_UNARY)
        return f"{left} {expr.op.value} {right}"
    if isinstance(expr, InCollection):
        return f"{_render(expr.item, _LEVEL_UNARY)} in {_render(expr.collection, _LEVEL_UNARY)}"
    if isinstance(expr, InList):
        values = ", ".join(_render_literal(v.value) for v in expr.values)
        return f"{_render(expr.item, _LEVEL_UNARY)} in ({values})"
    if isinstance(expr, Not):
        return "not " + _render(expr.operand, _LEVEL_UNARY)
    joiner = " and " if isinstance(expr, And) else " or "
    inner = _LEVEL_COMPARE if isinstance(expr, And) else _LEVEL_AND
    return joiner.join(_render(operand, inner) for operand in expr.operands)


@dataclass(frozen=True, slots=True)
class Filter:
    """A parsed, type-checked filter; immutable and cheap to evaluate repeatedly."""

    source: str
    expression: Expr

    def matches(self, subject: FilterSubject) -> bool:
        """True when the filter is true for ``subject`` (null counts as false)."""
        return self.expression.evaluate(subject) is True

    def __str__(self) -> str:
        return render(self.expression)
