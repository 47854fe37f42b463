"""The attribute-expression language of compositional control (LACE-style logical composition).

Grammar (whitespace is ignored; ``&`` binds tighter than ``|``; ``!`` and weights bind tightest)::

    expr     := and ("|" and)*                      OR
    and      := unary ("&" unary)*                  AND
    unary    := "!" unary                           NOT
              | NUMBER "*" unary                    weight prefix:   2.0*color=red
              | primary ("@" NUMBER)?               weight suffix:   color=red@2
    primary  := "(" expr ")" | term
    term     := NAME "=" VALUE | NAME "!=" VALUE    (``a!=v`` is ``!(a=v)``)

Examples: ``shape=triangle & color=red & !(size=small)``, ``color=red | color=blue``,
``2*shape=star & (color=red | color=green)@0.5``.

Weights (default 1, must be > 0; nested weights multiply) mean, for the energy
(:mod:`latent_flow.compositional.energy`): a factor on the energy for a term, an AND, or a NOT
operand; for the operands of an OR, the *mixture weights* ``pi_i`` (normalised to sum to 1) of the
weighted log-sum-exp. :func:`parse` only builds the tree; :func:`validate` checks attribute names
and values against a classifier's (or dataset's) attributes; :func:`satisfied` evaluates the
expression as a boolean formula on predicted attribute values (used to score samples with an
oracle).

Errors raise :class:`ExpressionError` with the 1-based column of the problem and a caret line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from torch import Tensor

__all__ = [
    "And",
    "ExpressionError",
    "Node",
    "Not",
    "Or",
    "Term",
    "parse",
    "satisfied",
    "terms",
    "to_string",
    "validate",
]


class ExpressionError(ValueError):
    """A malformed or invalid attribute expression; ``column`` is 1-based (0: whole expression)."""

    def __init__(self, message: str, text: str = "", column: int = 0) -> None:
        self.message = message
        self.text = text
        self.column = column
        if text and column > 0:
            full = f"{message} at column {column}\n  {text}\n  {' ' * (column - 1)}^"
        elif text:
            full = f"{message} in expression {text!r}"
        else:
            full = message
        super().__init__(full)


# ------------------------------------------------------------------------------------- AST
@dataclass(frozen=True)
class Node:
    weight: float = field(default=1.0, kw_only=True)


@dataclass(frozen=True)
class Term(Node):
    """``attribute=value`` (``column``: where it starts in the text, for messages)."""

    attribute: str
    value: str
    column: int = field(default=0, compare=False)


@dataclass(frozen=True)
class And(Node):
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Or(Node):
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Not(Node):
    child: Node


# ------------------------------------------------------------------------------------- lexer
_TOKEN = re.compile(r"\s*(?:(?P<op>!=|[&|!()=*@])|(?P<word>[A-Za-z0-9_.+\-]+)|(?P<bad>\S))")
_NUMBER = re.compile(r"^[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?$")


@dataclass(frozen=True)
class _Tok:
    kind: str  # "op", "word", "end"
    text: str
    column: int  # 1-based


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        assert m is not None  # the pattern always matches a non-space character
        if m.group("bad") is not None:
            col = m.start("bad") + 1
            raise ExpressionError(f"unexpected character {m.group('bad')!r}", text, col)
        kind = "op" if m.group("op") is not None else "word"
        start = m.start(kind)
        tokens.append(_Tok(kind, m.group(kind), start + 1))
        pos = m.end()
    tokens.append(_Tok("end", "", len(text.rstrip()) + 1))
    return tokens


# ------------------------------------------------------------------------------------- parser
class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self, offset: int = 0) -> _Tok:
        return self.tokens[min(self.i + offset, len(self.tokens) - 1)]

    def next(self) -> _Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def error(self, message: str, tok: _Tok) -> ExpressionError:
        found = "end of expression" if tok.kind == "end" else repr(tok.text)
        return ExpressionError(f"{message}, found {found}", self.text, tok.column)

    def expect(self, op: str, what: str) -> _Tok:
        tok = self.next()
        if tok.kind != "op" or tok.text != op:
            raise self.error(f"expected {what}", tok)
        return tok

    def weight(self, tok: _Tok) -> float:
        if tok.kind != "word" or not _NUMBER.match(tok.text):
            raise self.error("expected a positive number as weight", tok)
        value = float(tok.text)
        if not (value > 0 and math.isfinite(value)):
            raise ExpressionError(f"weight must be > 0, got {tok.text}", self.text, tok.column)
        return value

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise ExpressionError("empty expression: write e.g. 'shape=triangle & color=red'", self.text, 1)
        node = self.or_()
        tok = self.peek()
        if tok.kind != "end":
            if tok.text == ")":
                raise ExpressionError("unbalanced ')': no matching '('", self.text, tok.column)
            raise self.error("expected '&', '|' or the end of the expression", tok)
        return node

    def or_(self) -> Node:
        children = [self.and_()]
        while self.peek().kind == "op" and self.peek().text == "|":
            self.next()
            children.append(self.and_())
        return children[0] if len(children) == 1 else Or(tuple(children))

    def and_(self) -> Node:
        children = [self.unary()]
        while self.peek().kind == "op" and self.peek().text == "&":
            self.next()
            children.append(self.unary())
        return children[0] if len(children) == 1 else And(tuple(children))

    def unary(self) -> Node:
        tok = self.peek()
        if tok.kind == "op" and tok.text == "!":
            self.next()
            return Not(self.unary())
        if tok.kind == "word" and self.peek(1).kind == "op" and self.peek(1).text == "*":
            w = self.weight(self.next())
            self.next()  # "*"
            node = self.unary()
            return replace(node, weight=node.weight * w)
        node = self.primary()
        if self.peek().kind == "op" and self.peek().text == "@":
            self.next()
            w = self.weight(self.next())
            node = replace(node, weight=node.weight * w)
        return node

    def primary(self) -> Node:
        tok = self.next()
        if tok.kind == "op" and tok.text == "(":
            if self.peek().kind == "op" and self.peek().text == ")":
                raise ExpressionError("empty parentheses", self.text, self.peek().column)
            node = self.or_()
            close = self.peek()
            if close.kind != "op" or close.text != ")":
                raise ExpressionError(
                    f"missing ')': the '(' opened at column {tok.column} is never closed", self.text, close.column
                )
            self.next()
            return node
        if tok.kind != "word":
            raise self.error("expected a condition 'attribute=value', '(' or '!'", tok)
        if _NUMBER.match(tok.text) and not (self.peek().kind == "op" and self.peek().text in ("=", "!=")):
            raise self.error(f"a number ({tok.text}) must be followed by '*' to be a weight", self.peek())
        op = self.next()
        if op.kind != "op" or op.text not in ("=", "!="):
            raise self.error(f"expected '=' after attribute name {tok.text!r}", op)
        value = self.next()
        if value.kind != "word":
            raise self.error(f"expected a value after '{tok.text}{op.text}'", value)
        term = Term(tok.text, value.text, column=tok.column)
        return Not(term) if op.text == "!=" else term


def parse(text: str) -> Node:
    """Parse an expression such as ``"shape=triangle & color=red & !(size=small)"`` into a tree."""
    if not isinstance(text, str):
        raise ExpressionError(f"expression must be a string, got {type(text).__name__}")
    return _Parser(text).parse()


# ------------------------------------------------------------------------------------- helpers
def terms(node: Node) -> list[Term]:
    """All terms of the tree, left to right."""
    if isinstance(node, Term):
        return [node]
    if isinstance(node, Not):
        return terms(node.child)
    out: list[Term] = []
    for child in node.children:  # type: ignore[attr-defined]
        out.extend(terms(child))
    return out


def validate(
    node: Node,
    attribute_values: Mapping[str, Sequence[str]],
    *,
    continuous: Sequence[str] = (),
    text: str = "",
) -> Node:
    """Check every term's attribute and value; returns ``node`` unchanged.

    ``attribute_values``: valid value names per discrete attribute. Attributes in ``continuous``
    take a number (or one of their named values, when listed in ``attribute_values``).
    """
    known = list(attribute_values) + [c for c in continuous if c not in attribute_values]
    for term in terms(node):
        if term.attribute not in known:
            raise ExpressionError(
                f"unknown attribute {term.attribute!r}; valid attributes: {', '.join(known)}", text, term.column
            )
        values = list(attribute_values.get(term.attribute, []))
        if term.attribute in continuous:
            if term.value not in values:
                try:
                    float(term.value)
                except ValueError:
                    named = f" or one of {', '.join(values)}" if values else ""
                    raise ExpressionError(
                        f"continuous attribute {term.attribute!r} needs a number{named}, got {term.value!r}",
                        text,
                        term.column,
                    ) from None
        elif term.value not in values:
            raise ExpressionError(
                f"unknown value {term.value!r} for attribute {term.attribute!r}; valid values: {', '.join(values)}",
                text,
                term.column,
            )
    return node


def satisfied(node: Node, value_of: Callable[[Term], Tensor]) -> Tensor:
    """Boolean evaluation: ``value_of(term)`` gives a bool tensor (N,) per term; weights are ignored."""
    if isinstance(node, Term):
        return value_of(node).bool()
    if isinstance(node, Not):
        return ~satisfied(node.child, value_of)
    parts = [satisfied(c, value_of) for c in node.children]  # type: ignore[attr-defined]
    out = parts[0]
    for p in parts[1:]:
        out = (out & p) if isinstance(node, And) else (out | p)
    return out


def to_string(node: Node) -> str:
    """Canonical text of a tree (parses back to an equal tree)."""

    def w(s: str, n: Node) -> str:
        return s if n.weight == 1.0 else f"{s}@{n.weight:g}"

    if isinstance(node, Term):
        return w(f"{node.attribute}={node.value}", node)
    if isinstance(node, Not):
        return w(f"!({to_string(node.child)})", node)
    sep = " & " if isinstance(node, And) else " | "
    return w("(" + sep.join(to_string(c) for c in node.children) + ")", node)  # type: ignore[attr-defined]
