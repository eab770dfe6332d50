"""Schema Registry: tenant schemas extending a class, and unions built from profile-enabled datasets."""

from __future__ import annotations

from urllib.parse import quote

from tests.conftest import Api
from tests.helpers import EVENT_CLASS, PROFILE_CLASS, assert_error, create_dataset, event, ingest, profile

SCHEMAS = "/data/foundation/schemaregistry/tenant/schemas"
UNIONS = "/data/foundation/schemaregistry/tenant/unions"


def test_create_get_list_and_enable_for_profile(api: Api) -> None:
    response = api.post(SCHEMAS, json={"title": "Loyalty members", "type": "object", "allOf": [
        {"$ref": PROFILE_CLASS}, {"$ref": "https://ns.adobe.com/xdm/context/profile-personal-details"}]})
    assert response.status_code == 201, response.text
    schema = response.json()
    assert schema["meta:class"] == PROFILE_CLASS and schema["version"] == "1.0"
    assert schema["$id"].startswith("https://ns.adobe.com/") and schema["meta:altId"].startswith("_")
    assert PROFILE_CLASS in schema["meta:extends"]
    by_id = api.get(f"{SCHEMAS}/{quote(schema['$id'], safe='')}")
    assert by_id.status_code == 200 and by_id.json()["title"] == "Loyalty members"
    assert api.get(f"{SCHEMAS}/{schema['meta:altId']}").json()["$id"] == schema["$id"]
    listed = api.get(SCHEMAS).json()
    assert [r["$id"] for r in listed["results"]] == [schema["$id"]]
    patched = api.patch(f"{SCHEMAS}/{schema['meta:altId']}",
                        json=[{"op": "add", "path": "/meta:immutableTags", "value": ["union"]}])
    assert patched.status_code == 200 and patched.json()["version"] == "1.1"
    removing = api.patch(f"{SCHEMAS}/{schema['meta:altId']}", json=[{"op": "remove", "path": "/meta:immutableTags"}])
    assert_error(removing, 400, "union")
    union = api.get(f"{UNIONS}/{quote(PROFILE_CLASS + '__union', safe='')}").json()
    assert union["meta:unionSchemas"] == [schema["$id"]]
    dataset_id = create_dataset(api, "On schema", schema_id=schema["$id"])
    assert api.get(f"/data/foundation/catalog/dataSets/{dataset_id}").status_code == 200


def test_bad_schemas(api: Api) -> None:
    assert_error(api.post(SCHEMAS, json={"title": "No class", "allOf": [{"$ref": "https://example.com/x"}]}), 400,
                 "/allOf")
    assert_error(api.post(SCHEMAS, json={"allOf": [{"$ref": PROFILE_CLASS}]}), 400, "/title")
    assert_error(api.post(SCHEMAS, json={"title": "Two", "allOf": [{"$ref": PROFILE_CLASS}, {"$ref": EVENT_CLASS}]}),
                 400, "exactly one class")
    assert_error(api.get(f"{SCHEMAS}/_nobody.schemas.x"), 404, "_nobody.schemas.x")


def test_unions_hold_the_fields_of_profile_enabled_datasets(api: Api) -> None:
    crm = create_dataset(api, "CRM")
    hidden = create_dataset(api, "Not for profile", profile=False)
    web = create_dataset(api, "Web", schema_id=EVENT_CLASS)
    assert ingest(api, crm, [profile("C1", "a@x.com", "Ann", loyalty={"tier": "gold"})])["status"] == "success"
    assert ingest(api, hidden, [profile("C2", "b@x.com", "Bo", secret={"x": 1})])["status"] == "success"
    assert ingest(api, web, [event("e1", "1" * 38, web={"webPageDetails": {"name": "home"}})])["status"] == "success"
    listed = api.get(UNIONS).json()["results"]
    assert {u["$id"] for u in listed} == {PROFILE_CLASS + "__union", EVENT_CLASS + "__union"}
    profile_union = api.get(f"{UNIONS}/{quote(PROFILE_CLASS + '__union', safe='')}").json()
    props = profile_union["properties"]
    assert {"person", "loyalty", "identityMap", "segmentMembership", "timeSeriesEvents"} <= set(props)
    assert "secret" not in props and "web" not in props
    event_union = api.get(f"{UNIONS}/_xdm.context.experienceevent__union").json()
    assert "web" in event_union["properties"] and "loyalty" not in event_union["properties"]
    assert_error(api.get(f"{UNIONS}/nothing"), 404, "nothing")
