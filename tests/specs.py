"""Validate response bodies against Adobe's OpenAPI specs in ../shared/reference/specs.

`assert_matches_spec("catalog", "GET", "/dataSets/{DATASET_ID}", 200, body)` finds the operation's
JSON schema for that status and validates `body` with an OpenAPI 3.0 validator (refs resolved
inside the spec file), failing the test with the validator's message.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS30Validator

SPEC_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference" / "specs"
if not SPEC_DIR.is_dir():  # a clone sits beside shared/ in CI; a worktree may sit deeper
    SPEC_DIR = Path("/work/shared/reference/specs")


@functools.cache
def load_spec(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((SPEC_DIR / f"{name}.yaml").read_text())
    return loaded


def response_schema(spec: str, method: str, path: str, status: int) -> dict[str, Any]:
    document = load_spec(spec)
    operation = document["paths"][path][method.lower()]
    responses = operation["responses"]
    response = responses.get(status, responses.get(str(status)))
    if response is None:
        raise AssertionError(f"{spec}: {method} {path} has no {status} response")
    content = response.get("content", {})
    for media in ("application/json", *content.keys()):
        if media in content and "schema" in content[media]:
            schema: dict[str, Any] = content[media]["schema"]
            return schema
    raise AssertionError(f"{spec}: {method} {path} {status} defines no JSON body")


def assert_matches_spec(spec: str, method: str, path: str, status: int, body: Any) -> None:
    document = load_spec(spec)
    # Refs in the schema point at "#/components/...": give the schema the spec's components as its root.
    schema = {**response_schema(spec, method, path, status), "components": document.get("components", {})}
    try:
        OAS30Validator(schema).validate(body)
    except ValidationError as exc:
        raise AssertionError(f"{spec} {method} {path} {status}: {exc.message} at {list(exc.absolute_path)}") from None
