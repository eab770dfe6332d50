"""The PQL exception tree: every failure to parse or check a PQL expression is a `PQLError`."""

from __future__ import annotations

__all__ = ["PQLError", "PQLSyntaxError", "PQLTypeError", "PQLUnknownField", "PQLUnsupported"]


class PQLError(Exception):
    """A PQL expression that cannot be evaluated.

    `message` says what is wrong; `line` and `column` (1-based) point at it in the expression's text, or are
    None when the error has no position. ``str(error)`` is the message followed by the position.
    """

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        self.message = message
        self.line = line
        self.column = column
        super().__init__(message)

    def __str__(self) -> str:
        if self.line is None:
            return self.message
        return f"{self.message} (line {self.line}, column {self.column})"


class PQLSyntaxError(PQLError):
    """The text is not PQL: `expected` lists what the parser could have accepted at the position, e.g.
    ``['"(", "[", "false", a name, a number, a string, ...]`` (quoted words are literal tokens)."""

    def __init__(self, message: str, line: int | None, column: int | None, expected: list[str]) -> None:
        super().__init__(message, line, column)
        self.expected = expected


class PQLUnsupported(PQLError):
    """A PQL construct that openprofile does not evaluate (`construct` names it, e.g. ``"CHAIN"``, ``"let"``)."""

    def __init__(self, construct: str, line: int | None, column: int | None, message: str | None = None) -> None:
        super().__init__(message or f"{construct} is not supported", line, column)
        self.construct = construct


class PQLUnknownField(PQLError):
    """A field that the profile (or the event, or list item, in scope) does not have; `path` is the dotted path
    as written, up to and including the unknown name."""

    def __init__(self, path: str, line: int | None, column: int | None, message: str | None = None) -> None:
        super().__init__(message or f"unknown field '{path}'", line, column)
        self.path = path


class PQLTypeError(PQLError):
    """Operands whose types do not fit the operation, e.g. ``person.birthDate > "abc"`` or ``"x" + 1``."""
