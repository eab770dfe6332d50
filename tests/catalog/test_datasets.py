"""Catalog datasets: create, get, list, patch, delete, in AEP's shapes, and every bad input a 4xx."""

from __future__ import annotations

import pytest

from tests.conftest import Api
from tests.helpers import EVENT_CLASS, PROFILE_CLASS, PROFILE_UNION, assert_error, create_dataset
from tests.specs import assert_matches_spec

DATASETS = "/data/foundation/catalog/dataSets"


def test_create_answers_201_with_location_and_reference(api: Api) -> None:
    response = api.post(DATASETS, json={"name": "CRM", "schemaRef": {"id": PROFILE_CLASS,
                                                                     "contentType": "application/vnd.adobe.xed+json"}})
    assert response.status_code == 201
    body = response.json()
    assert_matches_spec("catalog", "POST", "/dataSets", 201, body)
    assert len(body) == 1 and body[0].startswith("@/dataSets/")
    dataset_id = body[0].split("/")[-1]
    assert len(dataset_id) == 24
    assert response.headers["Location"].endswith(f"/dataSets/{dataset_id}")


def test_get_is_keyed_by_id_and_matches_the_spec(api: Api) -> None:
    dataset_id = create_dataset(api, "Loyalty", description="points")
    response = api.get(f"{DATASETS}/{dataset_id}")
    assert response.status_code == 200
    body = response.json()
    assert list(body) == [dataset_id]
    assert_matches_spec("catalog", "GET", "/dataSets/{DATASET_ID}", 200, body)
    dataset = body[dataset_id]
    assert dataset["name"] == "Loyalty" and dataset["description"] == "points"
    assert dataset["schemaRef"]["id"] == PROFILE_CLASS
    assert dataset["tags"]["unifiedProfile"] == ["enabled:true"]
    assert dataset["classification"] == {"dataBehavior": "record", "managedBy": "CUSTOMER"}
    assert dataset["created"] <= dataset["updated"]
    assert dataset["observableSchema"] == {}
    only = api.get(f"{DATASETS}/{dataset_id}", params={"properties": "name,tags"}).json()[dataset_id]
    assert set(only) == {"name", "tags"}


def test_event_dataset_is_time_series(api: Api) -> None:
    dataset_id = create_dataset(api, "Web", schema_id=EVENT_CLASS)
    dataset = api.get(f"{DATASETS}/{dataset_id}").json()[dataset_id]
    assert dataset["classification"]["dataBehavior"] == "time-series"


def test_list_pages_with_limit_and_start(api: Api) -> None:
    ids = [create_dataset(api, f"set-{n}") for n in range(5)]
    everything = api.get(DATASETS, params={"limit": 100, "orderBy": "asc:created"}).json()
    assert_matches_spec("catalog", "GET", "/dataSets", 200, everything)
    assert list(everything) == ids
    first = api.get(DATASETS, params={"limit": 2, "start": 0, "orderBy": "asc:created"}).json()
    second = api.get(DATASETS, params={"limit": 2, "start": 2, "orderBy": "asc:created"}).json()
    assert list(first) == ids[:2] and list(second) == ids[2:4]
    newest_first = api.get(DATASETS, params={"orderBy": "desc:created"}).json()
    assert list(newest_first) == ids[::-1]
    named = api.get(DATASETS, params={"name": "set-3"}).json()
    assert list(named) == [ids[3]]


def test_list_entries_carry_what_aepp_reads(api: Api) -> None:
    create_dataset(api, "A")
    for dataset in api.get(DATASETS).json().values():
        assert isinstance(dataset["name"], str)
        assert isinstance(dataset["classification"], dict)
        assert isinstance(dataset["tags"], dict)


def test_patch_enables_profile_with_json_patch(api: Api) -> None:
    dataset_id = create_dataset(api, "Plain", profile=False)
    response = api.patch(f"{DATASETS}/{dataset_id}", json=[
        {"op": "add", "path": "/tags/unifiedProfile", "value": ["enabled:true"]},
        {"op": "add", "path": "/tags/unifiedIdentity", "value": ["enabled:true"]},
    ], headers={"Content-Type": "application/json-patch+json"})
    assert response.status_code == 200, response.text
    assert response.json() == [f"@/dataSets/{dataset_id}"]
    tags = api.get(f"{DATASETS}/{dataset_id}").json()[dataset_id]["tags"]
    assert tags == {"unifiedProfile": ["enabled:true"], "unifiedIdentity": ["enabled:true"]}


def test_patch_with_an_object_merges_fields(api: Api) -> None:
    dataset_id = create_dataset(api, "Before")
    assert api.patch(f"{DATASETS}/{dataset_id}", json={"name": "After"}).status_code == 200
    assert api.get(f"{DATASETS}/{dataset_id}").json()[dataset_id]["name"] == "After"


@pytest.mark.parametrize(("patch", "mention"), [
    ([{"op": "replace", "path": "/created", "value": 1}], "/created"),
    ([{"op": "remove", "path": "/description"}], "/description"),
    ([{"op": "jump", "path": "/name"}], "op"),
    ([{"op": "replace", "path": "/name", "value": ""}], "/name"),
    ({"imsOrg": "someone"}, "imsOrg"),
    ([{"op": "add", "path": "/tags/x", "value": "not-a-list"}], "/tags"),
])
def test_bad_patches_change_nothing(api: Api, patch: object, mention: str) -> None:
    dataset_id = create_dataset(api, "Keep")
    before = api.get(f"{DATASETS}/{dataset_id}").json()[dataset_id]
    assert_error(api.patch(f"{DATASETS}/{dataset_id}", json=patch), 400, mention)
    after = api.get(f"{DATASETS}/{dataset_id}").json()[dataset_id]
    assert after["name"] == before["name"] and after["tags"] == before["tags"]


def test_delete_removes_the_dataset(api: Api) -> None:
    dataset_id = create_dataset(api, "Gone")
    response = api.delete(f"{DATASETS}/{dataset_id}")
    assert response.status_code == 200
    assert response.json() == [f"@/dataSets/{dataset_id}"]
    assert_error(api.get(f"{DATASETS}/{dataset_id}"), 404, dataset_id)
    assert_error(api.delete(f"{DATASETS}/{dataset_id}"), 404, dataset_id)


def test_malformed_json_says_where(api: Api) -> None:
    body = b'{\n  "name": "x"\n  "description": "missing comma"\n}'
    error = assert_error(api.post(DATASETS, content=body, headers={"Content-Type": "application/json"}), 400,
                         "line 3", "column 3")
    assert "delimiter" in error["detail"]


@pytest.mark.parametrize(("body", "mentions"), [
    ({}, ["/name"]),
    ({"name": 5}, ["/name"]),
    ({"name": "x", "tags": {"a": "b"}}, ["/tags/a"]),
    ({"name": "x", "schemaRef": {"id": "https://ns.adobe.com/acme/schemas/unknown"}}, ["/schemaRef/id", "unknown"]),
    ({"name": "x", "schemaRef": {}}, ["/schemaRef/id"]),
    ([1, 2], ["/"]),
])
def test_invalid_bodies_name_the_field(api: Api, body: object, mentions: list[str]) -> None:
    assert_error(api.post(DATASETS, json=body), 400, *mentions)
    assert api.get(DATASETS).json() == {}


def test_wrong_content_type_is_415(api: Api) -> None:
    assert_error(api.post(DATASETS, content=b"name=x", headers={"Content-Type": "text/plain"}), 415, "Content-Type")


@pytest.mark.parametrize(("params", "mention"), [
    ({"limit": 0}, "limit"), ({"limit": 1000}, "limit"), ({"limit": "many"}, "limit"), ({"start": -1}, "start"),
    ({"orderBy": "sideways:created"}, "orderBy"), ({"orderBy": "asc:color"}, "orderBy"),
])
def test_bad_paging_is_400(api: Api, params: dict[str, object], mention: str) -> None:
    assert_error(api.get(DATASETS, params=params), 400, mention)


def test_union_dataset_is_accepted(api: Api) -> None:
    dataset_id = create_dataset(api, "Export target", schema_id=PROFILE_UNION, profile=False)
    assert api.get(f"{DATASETS}/{dataset_id}").status_code == 200
