"""`when:` conditions of pipeline steps: a small comparison grammar, parsed and evaluated without eval.

    condition  := disjunct ("or" disjunct)*
    disjunct   := term ("and" term)*
    term       := "not" term | "(" condition ")" | operand (OP operand)?
    OP         := == | != | < | <= | > | >=
    operand    := {{params.X}} | {{steps.S.outputs.Y}} | number | 'text' | "text" | true | false

Comparisons of two numbers are numeric; strings compare with strings, booleans with booleans (== and !=
only); anything else cannot be compared and says so. An operand alone is true when it is true, a non-zero
number or a non-empty string. Templates are resolved when the step is ready, from the run's params and
the outputs of the steps it needs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpupool.domain.errors import ValidationError

MAX_CONDITION_CHARS = 1000  # a condition is one line a person reads in `pipeline show`
_TOKEN_RE = re.compile(r"""\s*(?:(?P<tmpl>\{\{[^{}]*\}\})|(?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
                           |(?P<str>'[^']*'|"[^"]*")|(?P<op>==|!=|<=|>=|<|>)|(?P<paren>[()])
                           |(?P<word>[A-Za-z_]+))""", re.VERBOSE)
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}
Value = str | int | float | bool


class ConditionError(ValidationError):
    """A condition cannot be evaluated (a missing output, values that do not compare)."""


@dataclass(frozen=True, slots=True)
class _Ref:
    ref: str


@dataclass(frozen=True, slots=True)
class _Literal:
    value: Value


@dataclass(frozen=True, slots=True)
class _Compare:
    left: _Ref | _Literal
    op: str | None = None
    right: _Ref | _Literal | None = None


@dataclass(frozen=True, slots=True)
class _Not:
    inner: Node


@dataclass(frozen=True, slots=True)
class _Bool:
    op: str  # "and" | "or"
    parts: tuple[Node, ...]


Node = _Compare | _Not | _Bool


@dataclass(frozen=True, slots=True)
class Condition:
    """A parsed condition and the text it came from."""

    text: str
    tree: Node

    def refs(self) -> list[str]:
        """The template references it reads (without the braces), in order."""
        out: list[str] = []
        _collect(self.tree, out)
        return out

    def evaluate(self, resolve: Callable[[str], Value]) -> bool:
        """True or False; `resolve` gives the value of a reference (it raises ConditionError when the value
        is missing). ConditionError when values cannot be compared."""
        return _eval(self.tree, resolve)


def parse_condition(text: str, where: str) -> Condition:
    """Parse `text` (see the module); ValidationError at `where` saying what is wrong otherwise."""
    if len(text) > MAX_CONDITION_CHARS or not text.strip():
        raise ValidationError(f"expected a condition of 1..{MAX_CONDITION_CHARS} characters", where)
    tokens = _tokenize(text, where)
    parser = _Parser(tokens, where)
    tree = parser.condition()
    if parser.pos != len(tokens):
        raise ValidationError(f"unexpected {tokens[parser.pos][1]!r} in {text!r}; join comparisons with and / or",
                              where)
    return Condition(text, tree)


def _tokenize(text: str, where: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            raise ValidationError(f"cannot read {text[pos:].strip()[:20]!r} in {text!r}; operands are "
                                  "{{templates}}, numbers, quoted strings, true or false", where)
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], where: str) -> None:
        self.tokens = tokens
        self.pos = 0
        self.where = where

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _word(self, word: str) -> bool:
        tok = self._peek()
        if tok is not None and tok[0] == "word" and tok[1].lower() == word:
            self.pos += 1
            return True
        return False

    def condition(self) -> Node:
        parts = [self.disjunct()]
        while self._word("or"):
            parts.append(self.disjunct())
        return parts[0] if len(parts) == 1 else _Bool("or", tuple(parts))

    def disjunct(self) -> Node:
        parts = [self.term()]
        while self._word("and"):
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else _Bool("and", tuple(parts))

    def term(self) -> Node:
        if self._word("not"):
            return _Not(self.term())
        tok = self._peek()
        if tok == ("paren", "("):
            self.pos += 1
            inner = self.condition()
            if self._peek() != ("paren", ")"):
                raise ValidationError("a '(' is not closed", self.where)
            self.pos += 1
            return inner
        left = self.operand()
        tok = self._peek()
        if tok is not None and tok[0] == "op":
            self.pos += 1
            return _Compare(left, tok[1], self.operand())
        return _Compare(left)

    def operand(self) -> _Ref | _Literal:
        tok = self._peek()
        if tok is None:
            raise ValidationError("the condition ends where an operand was expected", self.where)
        self.pos += 1
        kind, text = tok
        if kind == "tmpl":
            return _Ref(text[2:-2].strip())
        if kind == "num":
            return _Literal(float(text) if any(c in text for c in ".eE") else int(text))
        if kind == "str":
            return _Literal(text[1:-1])
        if kind == "word" and text.lower() in ("true", "false"):
            return _Literal(text.lower() == "true")
        raise ValidationError(f"expected an operand, got {text!r}; quote text ('like this')", self.where)


def _collect(node: Node, out: list[str]) -> None:
    if isinstance(node, _Compare):
        out += [o.ref for o in (node.left, node.right) if isinstance(o, _Ref)]
    elif isinstance(node, _Not):
        _collect(node.inner, out)
    else:
        for part in node.parts:
            _collect(part, out)


def _value(operand: _Ref | _Literal, resolve: Callable[[str], Value]) -> Value:
    return resolve(operand.ref) if isinstance(operand, _Ref) else operand.value


def _truthy(value: Value) -> bool:
    return value if isinstance(value, bool) else value != 0 if isinstance(value, int | float) else value != ""


def _eval(node: Node, resolve: Callable[[str], Value]) -> bool:
    if isinstance(node, _Not):
        return not _eval(node.inner, resolve)
    if isinstance(node, _Bool):
        results = (_eval(p, resolve) for p in node.parts)
        return all(results) if node.op == "and" else any(results)
    left = _value(node.left, resolve)
    if node.op is None or node.right is None:
        return _truthy(left)
    right = _value(node.right, resolve)
    return compare(left, node.op, right)


def compare(left: Value, op: str, right: Value) -> bool:
    """`left op right` for two numbers, two strings, or two booleans (== and != only); ConditionError else."""
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (left, right))
    strings = isinstance(left, str) and isinstance(right, str)
    booleans = isinstance(left, bool) and isinstance(right, bool) and op in ("==", "!=")
    if not (numbers or strings or booleans):
        raise ConditionError(f"cannot compare {left!r} {op} {right!r} (a {type(left).__name__} and a "
                             f"{type(right).__name__})")
    return _OPS[op](left, right)
