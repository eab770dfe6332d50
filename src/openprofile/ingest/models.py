"""Batch-ingestion request models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class InputFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: Literal["json", "parquet", "csv"]
    isMultiLineJson: bool | None = None


class CreateBatchRequest(BaseModel):
    """`POST /data/foundation/import/batches`."""

    model_config = ConfigDict(extra="allow")

    datasetId: str = Field(min_length=1)
    inputFormat: InputFormat
    tags: dict[str, list[str]] | None = None
