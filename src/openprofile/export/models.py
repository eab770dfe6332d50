"""Export-job request models: every field of both documented variants (Profile and Segmentation docs).

Validation here is about shape (types, RFC 3339 timestamps, status values, required fields); whether
the dataset, merge policy and fields exist is checked by `service` against the tenant's data.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

Status = Literal["realized", "existing", "exited"]
DEFAULT_STATUSES: tuple[Status, ...] = ("realized", "existing")


def parse_rfc3339(value: str) -> datetime:
    """An RFC 3339 date-time with an offset (`Z` or `±hh:mm`); naive times are refused."""
    parsed = datetime.fromisoformat(value.replace("z", "Z"))
    if parsed.tzinfo is None:
        raise ValueError(f"'{value}' has no time zone offset (RFC 3339 needs Z or ±hh:mm)")
    return parsed


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


def _check_timestamp(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parse_rfc3339(value)
    except ValueError as exc:
        raise ValueError(f"'{value}' is not an RFC 3339 date-time: {exc}") from None
    return value


class MergePolicyRef(_Model):
    id: str | None = Field(default=None, min_length=1)
    version: int | None = Field(default=None, ge=1)


class SegmentFilter(_Model):
    segmentId: str = Field(min_length=1)
    segmentNs: str = "ups"
    status: list[Status] = Field(default_factory=lambda: list(DEFAULT_STATUSES), min_length=1)

    @field_validator("status", mode="before")
    @classmethod
    def _one_status(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value  # one doc example sends a bare string


class QualificationTime(_Model):
    startTime: str | None = None
    endTime: str | None = None

    @field_validator("startTime", "endTime")
    @classmethod
    def _rfc3339(cls, value: str | None) -> str | None:
        return _check_timestamp(value)

    @model_validator(mode="after")
    def _ordered(self) -> QualificationTime:
        if self.startTime and self.endTime and parse_rfc3339(self.startTime) > parse_rfc3339(self.endTime):
            raise ValueError(f"startTime {self.startTime} is after endTime {self.endTime}")
        return self


class ExportFilter(_Model):
    segments: list[SegmentFilter] | None = None
    segmentQualificationTime: QualificationTime | None = None
    fromIngestTimestamp: str | None = None
    emptyProfiles: bool = False

    @field_validator("fromIngestTimestamp")
    @classmethod
    def _rfc3339(cls, value: str | None) -> str | None:
        return _check_timestamp(value)


class EventListFilter(_Model):
    fromIngestTimestamp: str | None = None
    toIngestTimestamp: str | None = None

    @field_validator("fromIngestTimestamp", "toIngestTimestamp")
    @classmethod
    def _rfc3339(cls, value: str | None) -> str | None:
        return _check_timestamp(value)

    @model_validator(mode="after")
    def _ordered(self) -> EventListFilter:
        if (self.fromIngestTimestamp and self.toIngestTimestamp
                and parse_rfc3339(self.fromIngestTimestamp) > parse_rfc3339(self.toIngestTimestamp)):
            raise ValueError(f"fromIngestTimestamp {self.fromIngestTimestamp} is after toIngestTimestamp "
                             f"{self.toIngestTimestamp}")
        return self


class EventList(_Model):
    fields: str | None = None
    filter: EventListFilter | None = None


class AdditionalFields(_Model):
    eventList: EventList | None = None


class Destination(_Model):
    """`datasetId` is written; the docs' `dataSetId` is accepted on input."""

    datasetId: str = Field(min_length=1, validation_alias=AliasChoices("datasetId", "dataSetId"))
    segmentPerBatch: bool = False


class SchemaName(_Model):
    name: str = Field(min_length=1)


class EvaluationInfo(_Model):
    segmentation: bool = False


class CreateExportJobRequest(_Model):
    """`POST /export/jobs`."""

    fields: str | None = None
    mergePolicy: MergePolicyRef | None = None
    filter: ExportFilter | None = None
    additionalFields: AdditionalFields | None = None
    destination: Destination
    schema_: SchemaName = Field(alias="schema")
    evaluationInfo: EvaluationInfo | None = None
