"""Catalog request models (what clients send). Responses are rendered by `service` in AEP's shapes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SchemaRef(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    contentType: str = "application/vnd.adobe.xed+json;version=1"


class DataSetRequest(BaseModel):
    """`POST /dataSets`. `name` is required here: AEP's spec marks nothing required, but a nameless set is useless."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=512)
    description: str | None = None
    tags: dict[str, list[str]] | None = None
    schemaRef: SchemaRef | None = None
    fileDescription: dict[str, object] | None = None
    enableErrorDiagnostics: bool | None = None
    dataSourceId: int | None = None
