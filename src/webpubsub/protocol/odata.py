"""The OData ``filter`` of REST sends and bulk group operations (Azure REST API reference).

:func:`parse_filter` turns the text into a :class:`Filter`: a tree of frozen nodes, parsed
and type-checked once, then evaluated per candidate connection with
:meth:`Filter.matches` against a :class:`FilterSubject`.  The tokenizer and the parser
live here; the nodes, their evaluation and printing in :mod:`webpubsub.protocol.odata_ast`.

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

Every problem raises :class:`~webpubsub.errors.InvalidParameter` with the 0-based position
of the offending character and a short excerpt of the text around it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from webpubsub.errors import InvalidParameter
from webpubsub.protocol.odata_ast import (
    COMPARE_WORDS,
    FUNCTIONS,
    IDENTIFIERS,
    INT_MAX,
    INT_MIN,
    And,
    Call,
    CompareOp,
    Comparison,
    Expr,
    Filter,
    FilterSubject,
    Function,
    Identifier,
    InCollection,
    InList,
    Literal,
    Not,
    Or,
    Type,
)

__all__ = [
    "MAX_CLAUSES",
    "MAX_DEPTH",
    "MAX_FILTER_LENGTH",
    "Filter",
    "FilterSubject",
    "parse_filter",
]

MAX_FILTER_LENGTH = 4096
"""Longest accepted filter text, in characters."""
MAX_CLAUSES = 100
"""Default limit on clauses (operands of ``and``/``or``)."""
MAX_DEPTH = 32
"""Deepest accepted nesting of parentheses, function calls and ``not``."""


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
            if len(lexeme) > 20 or not INT_MIN <= int(lexeme) <= INT_MAX:
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


def _error(text: str, pos: int, detail: str) -> InvalidParameter:
    start, end = max(pos - 12, 0), min(pos + 12, len(text))
    excerpt = ("..." if start else "") + text[start:end] + ("..." if end < len(text) else "")
    return InvalidParameter(
        f'Invalid filter at position {pos}: {detail} (near "{_printable(excerpt)}")',
        target="filter",
    )


# --- parser ------------------------------------------------------------------------

_OPERATOR_KEYWORDS = frozenset({"and", "or", "in", *COMPARE_WORDS})


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

    def fail(self, pos: int, detail: str) -> InvalidParameter:
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
        if word in COMPARE_WORDS:
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
        if self.at_keyword("in", *COMPARE_WORDS):
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
        if word in IDENTIFIERS:
            self.advance()
            return Identifier(IDENTIFIERS[word])
        if self.tokens[self.index + 1].kind == "(":
            return self.parse_call()
        known = "userId, connectionId, groups or protocol"
        raise self.fail(token.pos, f"unknown identifier {_quote(token.text)} (expected {known})")

    def parse_call(self) -> Expr:
        name_token = self.advance()
        name = name_token.text.lower()
        function = FUNCTIONS.get(name)
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
        self, name: str, function: Function, pos: int, args: list[Expr], positions: list[int]
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
    """Parse and type-check an OData filter; raise ``InvalidParameter`` if it is invalid.

    An empty filter is invalid here: callers treat an absent or empty ``filter`` as
    "select every connection" before calling this.
    """
    if len(text) > MAX_FILTER_LENGTH:
        raise InvalidParameter(
            f"Invalid filter: longer than {MAX_FILTER_LENGTH} characters", target="filter"
        )
    return Filter(text, _Parser(text, max_clauses).parse())
