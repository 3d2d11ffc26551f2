"""Where keys are written in TOML text. A misspelt option that silently does nothing is worse
than an error, and an error should point at the key's line; tomllib reports no positions, so
``key_lines`` finds them in the text."""

from __future__ import annotations

import re
from typing import Any

from gradlint.run.config.toml_text import BARE_KEY, string_value

__all__ = ["key_lines"]


class _Stop(Exception):
    """The text is not TOML this scanner understands; the lines found so far stand."""


class _Scanner:
    """Finds the line of every key, table and array element in TOML text.

    Paths are tuples of keys and array indices, as the parsed document nests them:
    ``("tool", "gradlint", "targets", 0, "kwargs")``. The text has already been parsed by
    tomllib, so this scanner needs no error handling beyond giving up.
    """

    def __init__(self, text: str) -> None:
        self.s, self.i, self.line = text, 0, 1
        self.lines: dict[tuple[Any, ...], int] = {}
        self.arrays: dict[tuple[Any, ...], int] = {}

    def _peek(self, n: int = 1) -> str:
        return self.s[self.i:self.i + n]

    def _advance(self, n: int = 1) -> None:
        self.line += self.s.count("\n", self.i, self.i + n)
        self.i += n

    def _mark(self, path: tuple[Any, ...], line: int) -> None:
        self.lines.setdefault(path, line)

    def _blank(self, newlines: bool) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self._advance()
            elif c == "#":
                end = self.s.find("\n", self.i)
                self._advance((len(self.s) if end == -1 else end) - self.i)
            else:
                return

    def _string(self) -> str:
        start = self.i
        for quote in ('"""', "'''", '"', "'"):
            if self._peek(len(quote)) == quote:
                break
        self._advance(len(quote))
        while self.i < len(self.s):
            if quote[0] == '"' and self.s[self.i] == "\\":
                self._advance(2)
            elif self._peek(len(quote)) == quote:
                self._advance(len(quote))
                # A multi-line string may end in up to two extra quotes.
                while len(quote) == 3 and self._peek() == quote[0]:
                    self._advance()
                break
            else:
                self._advance()
        return string_value(self.s[start:self.i])

    def _key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self._blank(newlines=False)
            if self._peek() in ('"', "'"):
                parts.append(self._string())
            else:
                m = BARE_KEY.match(self.s, self.i)
                if m is None:
                    raise _Stop
                parts.append(m.group())
                self._advance(len(m.group()))
            self._blank(newlines=False)
            if self._peek() != ".":
                return tuple(parts)
            self._advance()

    def _resolve(self, key: tuple[str, ...]) -> tuple[Any, ...]:
        # Inside [[a]], a header [a.b] or [[a.b]] belongs to a's latest element.
        out: tuple[Any, ...] = ()
        for part in key:
            out += (part,)
            if out in self.arrays and len(out) < len(key):
                out += (self.arrays[out] - 1,)
        return out

    def _value(self, path: tuple[Any, ...]) -> None:
        c = self._peek()
        if c in ('"', "'"):
            self._string()
        elif c == "[":
            self._advance()
            index = 0
            while True:
                self._blank(newlines=True)
                if self._peek() in ("]", ""):
                    self._advance()
                    return
                self._mark(path + (index,), self.line)
                self._value(path + (index,))
                index += 1
                self._blank(newlines=True)
                if self._peek() == ",":
                    self._advance()
        elif c == "{":
            self._advance()
            while True:
                self._blank(newlines=True)
                if self._peek() in ("}", ""):
                    self._advance()
                    return
                self._keyval(path)
                self._blank(newlines=True)
                if self._peek() == ",":
                    self._advance()
        else:
            m = re.compile(r"[^,\]}\n#]*").match(self.s, self.i)
            self._advance(len(m.group()) if m else 1)

    def _keyval(self, table: tuple[Any, ...]) -> None:
        line = self.line
        key = self._key()
        for k in range(1, len(key) + 1):
            self._mark(table + key[:k], line)
        if self._peek() != "=":
            raise _Stop
        self._advance()
        self._blank(newlines=False)
        self._value(table + key)

    def scan(self) -> dict[tuple[Any, ...], int]:
        table: tuple[Any, ...] = ()
        try:
            while True:
                self._blank(newlines=True)
                if self.i >= len(self.s):
                    break
                if self._peek() == "[":
                    line, double = self.line, self._peek(2) == "[["
                    self._advance(2 if double else 1)
                    key = self._key()
                    self._advance(2 if double else 1)
                    table = self._resolve(key)
                    self._mark(table, line)
                    if double:
                        self.arrays[table] = self.arrays.get(table, 0) + 1
                        table += (self.arrays[table] - 1,)
                        self._mark(table, line)
                else:
                    self._keyval(table)
        except (_Stop, IndexError):
            pass
        return self.lines


def key_lines(text: str) -> dict[tuple[Any, ...], int]:
    """The line of every key, table header and array element in TOML text.

    Args:
        text: A TOML document.

    Returns:
        Path (keys and array indices, as tomllib nests the document) -> 1-based line where it is
        first written. A path written implicitly (the parent of a dotted key) has its first
        child's line.
    """
    return _Scanner(text).scan()
