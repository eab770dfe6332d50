"""Merge-policy request models (what clients send to `/config/mergePolicies`).

Responses are rendered by `policies.policy_json` in AEP's shape. Booleans are lax on purpose: Adobe's
own examples send `"isActiveOnEdge": "false"`. Unknown top-level fields are refused so a typo such as
`isActiveOnEgde` is a 400 naming it rather than a silently ignored setting; the read-only fields a
client copies from a GET (`id`, `imsOrgId`, `sandbox`, `version`, `updateEpoch`) are accepted and ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SchemaName = Literal["_xdm.context.profile", "_xdm.context.experienceevent"]
IdentityGraphType = Literal["none", "pdg"]
AttributeMergeType = Literal["timestampOrdered", "dataSetPrecedence"]


class SchemaClassIn(BaseModel):
    """`schema`: the XDM class the policy merges, by its `_xdm.context.*` name."""

    model_config = ConfigDict(extra="forbid")

    name: SchemaName


class IdentityGraphIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: IdentityGraphType


class AttributeMergeIn(BaseModel):
    """`order` lists dataset ids by priority; it is required for `dataSetPrecedence` (checked by the service)."""

    model_config = ConfigDict(extra="forbid")

    type: AttributeMergeType
    order: list[str] | None = None


class MergePolicyRequest(BaseModel):
    """`POST` and `PUT /config/mergePolicies[/{id}]`: Adobe's `PostMergePolicy` (PUT's `MergePolicy` adds id)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str | None = Field(default=None, min_length=1, max_length=512)
    schema_class: SchemaClassIn = Field(alias="schema")
    default: bool = False
    identityGraph: IdentityGraphIn
    attributeMerge: AttributeMergeIn
    isActiveOnEdge: bool = False
    # Read-only: accepted (clients PUT back what they GET) and ignored; a PUT's `id` must match the path.
    id: str | None = None
    version: Any = None
    imsOrgId: Any = None
    sandbox: Any = None
    updateEpoch: Any = None


class BulkGetId(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1)


class BulkGetRequest(BaseModel):
    """`POST /config/mergePolicies/bulk-get`: `{"ids": [{"id": ...}, ...]}`, 1 to 100 ids as UPS's bulk-gets allow."""

    model_config = ConfigDict(extra="forbid")

    ids: list[BulkGetId] = Field(min_length=1, max_length=100)
