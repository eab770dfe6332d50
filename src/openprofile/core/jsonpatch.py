"""A small RFC 6902 JSON-Patch applier (add, remove, replace, test), used by catalog and profile PATCH.

It works on a copy and raises `ValidationFailed` naming the operation's path, so a bad patch
changes nothing.
"""

from __future__ import annotations

import copy
from typing import Any

from openprofile.core.errors import FieldError, ValidationFailed

OPS = {"add", "remove", "replace", "test"}


def _tokens(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError("a JSON pointer starts with '/'")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _fail(index: int, path: str, message: str) -> ValidationFailed:
    return ValidationFailed(
        f"JSON-Patch operation {index} on '{path}': {message}",
        fields=[FieldError(f"/{index}/path", f"{path}: {message}")],
    )


def apply_patch(document: dict[str, Any], operations: list[Any]) -> dict[str, Any]:
    result = copy.deepcopy(document)
    for index, op in enumerate(operations):
        if not isinstance(op, dict) or op.get("op") not in OPS or not isinstance(op.get("path"), str):
            raise ValidationFailed(
                f"JSON-Patch operation {index} needs 'op' (add, remove, replace, test) and a string 'path'",
                fields=[FieldError(f"/{index}", "needs op and path")],
            )
        path: str = op["path"]
        try:
            tokens = _tokens(path)
        except ValueError as exc:
            raise _fail(index, path, str(exc)) from None
        if not tokens:
            raise _fail(index, path, "the whole document cannot be patched")
        if op["op"] in ("add", "replace", "test") and "value" not in op:
            raise _fail(index, path, "'value' is required")
        parent: Any = result
        for token in tokens[:-1]:
            if isinstance(parent, dict):
                if token not in parent:
                    if op["op"] != "add":
                        raise _fail(index, path, f"'{token}' does not exist")
                    parent[token] = {}
                parent = parent[token]
            elif isinstance(parent, list) and token.isdigit() and int(token) < len(parent):
                parent = parent[int(token)]
            else:
                raise _fail(index, path, f"'{token}' does not exist")
        last = tokens[-1]
        kind = op["op"]
        if isinstance(parent, dict):
            if kind in ("remove", "replace", "test") and last not in parent:
                raise _fail(index, path, "does not exist")
            if kind == "remove":
                del parent[last]
            elif kind == "test":
                if parent[last] != op["value"]:
                    raise _fail(index, path, "test failed")
            else:
                parent[last] = copy.deepcopy(op["value"])
        elif isinstance(parent, list):
            if last == "-" and kind == "add":
                parent.append(copy.deepcopy(op["value"]))
                continue
            if not last.isdigit() or int(last) > len(parent) or (kind != "add" and int(last) >= len(parent)):
                raise _fail(index, path, "array index out of range")
            position = int(last)
            if kind == "add":
                parent.insert(position, copy.deepcopy(op["value"]))
            elif kind == "remove":
                parent.pop(position)
            elif kind == "replace":
                parent[position] = copy.deepcopy(op["value"])
            elif parent[position] != op["value"]:
                raise _fail(index, path, "test failed")
        else:
            raise _fail(index, path, "parent is not an object or array")
    return result
