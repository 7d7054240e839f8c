"""The OData ``filter`` of REST sends and bulk group operations (rest-api.md §4).

:func:`parse_filter` turns the text into a :class:`Filter`: a tree of frozen nodes, parsed
and type-checked once, then evaluated per candidate connection with
:meth:`Filter.matches` against a :class:`FilterSubject`.

Grammar, loosest binding first (keywords and names are case-insensitive)::

    or      := and ('or' and)*
    and     := compare ('and' compare)*
    compare := unary [('eq'|'ne'|'gt'|'ge'|'lt'|'le') unary
                     | 'in' ('groups' | '(' literal (',' literal)* ')')]
    unary   := 'not' unary | primary
    primary := literal | identifier | function '(' [or (',' or)*] ')' | '(' or ')'
    literal := 'string' (quote doubled inside) | [-]digits | true | false | null

Comparisons do not chain (``a eq b eq c`` needs parentheses).  ``not`` binds tighter
than comparisons, so ``not length(userId) gt 5`` is a type error.

Types are checked while parsing: identifiers are strings except ``groups`` (a
collection); functions have fixed signatures; a comparison needs scalar operands;
``and``/``or``/``not`` and the whole filter need booleans.  At run time ``userId``
and ``protocol`` may be null: a function of a null yields null, a comparison with a
null operand is false except ``eq``/``ne`` (``userId eq null``), operands of different
types never compare (every operator gives false), and the logic is three-valued
(``not null`` is null, ``null and false`` is false); a filter that yields null does
not match.  Strings compare by code point and are case-sensitive.

Every problem raises :class:`~webpubsub.errors.BadRequest` with the 0-based position
of the offending character and a short excerpt of the text around it.
"""

from __future__ import annotations

import enum
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias

from webpubsub.errors import BadRequest

MAX_FILTER_LENGTH = 4096
"""Longest accepted filter text, in characters."""
MAX_CLAUSES = 100
"""Default limit on clauses (operands of ``and``/``or``)."""
MAX_DEPTH = 32
"""Deepest accepted nesting of parentheses, function calls and ``not``."""

_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1

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


_IDENTIFIERS = {
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
        return _FUNCTIONS[self.name].result

    def evaluate(self, subject: FilterSubject) -> Value:
        values: list[Value] = []
        for arg in self.args:
            value = arg.evaluate(subject)
            if value is None:
                return None
            values.append(value)
        return _FUNCTIONS[self.name].impl(*values)


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
_COMPARE_WORDS = frozenset(op.value for op in CompareOp)


# --- functions ---------------------------------------------------------------------


def _substring(text: str, start: int, length: int | None = None) -> str:
    rest = text[max(start, 0) :]
    return rest if length is None else rest[: max(length, 0)]


@dataclass(frozen=True, slots=True)
class _Function:
    signatures: tuple[tuple[Type, ...], ...]
    result: Type
    impl: Callable[..., Value]


_S, _I = Type.STRING, Type.INT
_FUNCTIONS: dict[str, _Function] = {
    "tolower": _Function(((_S,),), _S, str.lower),
    "toupper": _Function(((_S,),), _S, str.upper),
    "trim": _Function(((_S,),), _S, str.strip),
    "substring": _Function(((_S, _I), (_S, _I, _I)), _S, _substring),
    "concat": _Function(((_S, _S),), _S, lambda a, b: a + b),
    "indexof": _Function(((_S, _S),), _I, str.find),
    "length": _Function(((_S,), (Type.COLLECTION,)), _I, len),
    "startswith": _Function(((_S, _S),), Type.BOOL, str.startswith),
    "endswith": _Function(((_S, _S),), Type.BOOL, str.endswith),
    "contains": _Function(((_S, _S),), Type.BOOL, lambda s, t: t in s),
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


# --- tokens ------------------------------------------------------------------------


class _Token(NamedTuple):
    kind: str
    """``name``, ``string``, ``int``, ``(``, ``)``, ``,`` or ``end``."""
    text: str
    pos: int
    value: str | int | None = None


_TOKEN = re.compile(
    r"""
      (?P<space>[ \t\r\n]+)
    | (?P<punct>[(),])
    | (?P<string>'(?:[^']++|'')*+')
    | (?P<int>-?[0-9]+)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE,
)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        match = _TOKEN.match(text, i)
        if match is None:
            if text[i] == "'":
                raise _error(text, i, "unterminated string literal")
            raise _error(text, i, f"unexpected character {_quote(text[i])}")
        kind, lexeme = match.lastgroup, match.group()
        if kind == "punct":
            tokens.append(_Token(lexeme, lexeme, i))
        elif kind == "string":
            tokens.append(_Token("string", lexeme, i, lexeme[1:-1].replace("''", "'")))
        elif kind == "int":
            if len(lexeme) > 20 or not _INT_MIN <= int(lexeme) <= _INT_MAX:
                raise _error(text, i, "integer literal out of the 64-bit range")
            tokens.append(_Token("int", lexeme, i, int(lexeme)))
        elif kind == "name":
            tokens.append(_Token("name", lexeme, i))
        i = match.end()
    tokens.append(_Token("end", "", n))
    return tokens


# --- errors ------------------------------------------------------------------------


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def _quote(text: str, limit: int = 24) -> str:
    shown = text if len(text) <= limit else text[: limit - 3] + "..."
    return "'" + _printable(shown) + "'"


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "end of input"
    if token.kind == "string":
        return _printable(token.text if len(token.text) <= 24 else token.text[:21] + "...")
    return _quote(token.text)


def _error(text: str, pos: int, detail: str) -> BadRequest:
    start, end = max(pos - 12, 0), min(pos + 12, len(text))
    excerpt = ("..." if start else "") + text[start:end] + ("..." if end < len(text) else "")
    return BadRequest(
        f'Invalid filter at position {pos}: {detail} (near "{_printable(excerpt)}")',
        target="filter",
    )


# --- parser ------------------------------------------------------------------------

_OPERATOR_KEYWORDS = frozenset({"and", "or", "in", *_COMPARE_WORDS})


class _Parser:
    def __init__(self, text: str, max_clauses: int) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0
        self.clauses = 1
        self.max_clauses = max_clauses

    # token helpers

    @property
    def peek(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def at_keyword(self, *words: str) -> bool:
        token = self.peek
        return token.kind == "name" and token.text.lower() in words

    def fail(self, pos: int, detail: str) -> BadRequest:
        return _error(self.text, pos, detail)

    def expect(self, kind: str, what: str) -> _Token:
        if self.peek.kind != kind:
            raise self.fail(self.peek.pos, f"expected {what} but found {_describe(self.peek)}")
        return self.advance()

    def enter(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(token.pos, f"expression nested deeper than {MAX_DEPTH} levels")

    def need(self, expr: Expr, pos: int, wanted: Type, where: str) -> None:
        if expr.type is not wanted:
            raise self.fail(pos, f"{where} needs {wanted.value} but got {expr.type.value}")

    def need_scalar(self, expr: Expr, pos: int, where: str) -> None:
        if expr.type is Type.COLLECTION:
            hint = "; use 'x in groups' or length(groups)"
            raise self.fail(pos, f"{where} cannot take a collection{hint}")

    # grammar

    def parse(self) -> Expr:
        start = self.peek.pos
        expr = self.parse_or()
        if self.peek.kind != "end":
            found = _describe(self.peek)
            raise self.fail(
                self.peek.pos, f"expected an operator or end of input but found {found}"
            )
        self.need(expr, start, Type.BOOL, "the filter")
        return expr

    def parse_or(self) -> Expr:
        return self.parse_logical("or", self.parse_and)

    def parse_and(self) -> Expr:
        return self.parse_logical("and", self.parse_compare)

    def parse_logical(self, word: str, parse_operand: Callable[[], Expr]) -> Expr:
        start = self.peek.pos
        first = parse_operand()
        if not self.at_keyword(word):
            return first
        self.need(first, start, Type.BOOL, f"'{word}'")
        operands = [first]
        while self.at_keyword(word):
            keyword = self.advance()
            self.clauses += 1
            if self.clauses > self.max_clauses:
                raise self.fail(keyword.pos, f"more than {self.max_clauses} clauses")
            start = self.peek.pos
            operand = parse_operand()
            self.need(operand, start, Type.BOOL, f"'{word}'")
            operands.append(operand)
        return And(tuple(operands)) if word == "and" else Or(tuple(operands))

    def parse_compare(self) -> Expr:
        start = self.peek.pos
        left = self.parse_unary()
        token = self.peek
        word = token.text.lower() if token.kind == "name" else ""
        expr: Expr
        if word in _COMPARE_WORDS:
            self.advance()
            self.need_scalar(left, start, f"'{word}'")
            right_pos = self.peek.pos
            right = self.parse_unary()
            self.need_scalar(right, right_pos, f"'{word}'")
            expr = Comparison(CompareOp(word), left, right)
        elif word == "in":
            self.advance()
            self.need_scalar(left, start, "'in'")
            expr = self.parse_in(left)
        else:
            return left
        if self.at_keyword("in", *_COMPARE_WORDS):
            found = _describe(self.peek)
            raise self.fail(self.peek.pos, f"comparisons cannot be chained, found {found}")
        return expr

    def parse_in(self, item: Expr) -> Expr:
        if self.peek.kind != "(":
            pos = self.peek.pos
            collection = self.parse_unary()
            if collection.type is not Type.COLLECTION:
                detail = "'in' needs groups or a parenthesized list of literals"
                raise self.fail(pos, f"{detail} but got {collection.type.value}")
            return InCollection(item, collection)
        self.advance()
        values = [self.parse_list_literal()]
        while self.peek.kind == ",":
            self.advance()
            values.append(self.parse_list_literal())
        self.expect(")", "',' or ')'")
        return InList(item, tuple(values))

    def parse_list_literal(self) -> Literal:
        token = self.peek
        expr: Expr | None = None
        if token.kind in ("string", "int") or self.at_keyword("true", "false", "null"):
            expr = self.parse_primary()
        if not isinstance(expr, Literal):
            raise self.fail(token.pos, f"expected a literal but found {_describe(token)}")
        return expr

    def parse_unary(self) -> Expr:
        if not self.at_keyword("not"):
            return self.parse_primary()
        keyword = self.advance()
        self.enter(keyword)
        pos = self.peek.pos
        operand = self.parse_unary()
        self.depth -= 1
        self.need(operand, pos, Type.BOOL, "'not'")
        return Not(operand)

    def parse_primary(self) -> Expr:
        token = self.peek
        if token.kind in ("string", "int"):
            self.advance()
            return Literal(token.value)
        if token.kind == "(":
            self.advance()
            self.enter(token)
            expr = self.parse_or()
            self.expect(")", "')'")
            self.depth -= 1
            return expr
        if token.kind != "name":
            raise self.fail(token.pos, f"expected an expression but found {_describe(token)}")
        word = token.text.lower()
        if word in _OPERATOR_KEYWORDS or word == "not":
            raise self.fail(token.pos, f"expected an expression but found {_describe(token)}")
        if word in ("true", "false", "null"):
            self.advance()
            return Literal(None if word == "null" else word == "true")
        if word in _IDENTIFIERS:
            self.advance()
            return Identifier(_IDENTIFIERS[word])
        if self.tokens[self.index + 1].kind == "(":
            return self.parse_call()
        known = "userId, connectionId, groups or protocol"
        raise self.fail(token.pos, f"unknown identifier {_quote(token.text)} (expected {known})")

    def parse_call(self) -> Expr:
        name_token = self.advance()
        name = name_token.text.lower()
        function = _FUNCTIONS.get(name)
        if function is None:
            raise self.fail(name_token.pos, f"unknown function {_quote(name_token.text)}")
        self.enter(self.advance())
        args: list[Expr] = []
        positions: list[int] = []
        if self.peek.kind != ")":
            while True:
                positions.append(self.peek.pos)
                args.append(self.parse_or())
                if self.peek.kind != ",":
                    break
                self.advance()
        self.expect(")", "',' or ')'")
        self.depth -= 1
        self.check_call(name, function, name_token.pos, args, positions)
        return Call(name, tuple(args))

    def check_call(
        self, name: str, function: _Function, pos: int, args: list[Expr], positions: list[int]
    ) -> None:
        arities = sorted({len(signature) for signature in function.signatures})
        if len(args) not in arities:
            counts = " or ".join(str(a) for a in arities)
            plural = "" if arities == [1] else "s"
            detail = f"{name}() takes {counts} argument{plural} but got {len(args)}"
            raise self.fail(pos, detail)
        candidates = [s for s in function.signatures if len(s) == len(args)]
        for index, (arg, arg_pos) in enumerate(zip(args, positions, strict=True)):
            allowed = {s[index] for s in candidates}
            null_ok = arg.type is Type.NULL and bool(allowed & {Type.STRING, Type.INT})
            if arg.type in allowed or null_ok:
                candidates = [
                    s for s in candidates if arg.type is Type.NULL or s[index] is arg.type
                ]
                continue
            wanted = " or ".join(sorted(t.value for t in allowed))
            raise self.fail(
                arg_pos, f"argument {index + 1} of {name}() needs {wanted} but got {arg.type.value}"
            )


def parse_filter(text: str, *, max_clauses: int = MAX_CLAUSES) -> Filter:
    """Parse and type-check an OData filter; raise ``BadRequest`` if it is invalid.

    An empty filter is invalid here: callers treat an absent or empty ``filter`` as
    "select every connection" before calling this.
    """
    if len(text) > MAX_FILTER_LENGTH:
        raise BadRequest(
            f"Invalid filter: longer than {MAX_FILTER_LENGTH} characters", target="filter"
        )
    return Filter(text, _Parser(text, max_clauses).parse())
