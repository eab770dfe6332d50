"""Two orgs, and two sandboxes of one org, never see each other's datasets, batches, files or schemas."""

from __future__ import annotations

from tests.conftest import CLIENT_ID, CLIENT_SECRET, ORG, OTHER_CLIENT_ID, OTHER_ORG, OTHER_SECRET, Api
from tests.helpers import create_dataset, ingest, profile

CATALOG = "/data/foundation/catalog"
EXPORT = "/data/foundation/export"
IMPORT = "/data/foundation/import/batches"


def test_tenants_are_isolated(api: Api) -> None:
    prod = api
    dev = api.as_tenant(ORG, "dev", CLIENT_ID, CLIENT_SECRET)
    other = api.as_tenant(OTHER_ORG, "prod", OTHER_CLIENT_ID, OTHER_SECRET)
    dataset_id = create_dataset(prod, "CRM")
    batch = ingest(prod, dataset_id, [profile("C1", "a@x.com", "Ann")])
    assert batch["status"] == "success"
    file_id = f"{batch['id']}-1"
    name = prod.get(f"{EXPORT}/files/{file_id}").json()["data"][0]["name"]
    schema = prod.post("/data/foundation/schemaregistry/tenant/schemas", json={
        "title": "CRM", "type": "object", "allOf": [{"$ref": "https://ns.adobe.com/xdm/context/profile"}]}).json()

    for outsider in (dev, other):
        assert outsider.get(f"{CATALOG}/dataSets").json() == {}
        assert outsider.get(f"{CATALOG}/dataSets/{dataset_id}").status_code == 404
        assert outsider.patch(f"{CATALOG}/dataSets/{dataset_id}", json={"name": "stolen"}).status_code == 404
        assert outsider.delete(f"{CATALOG}/dataSets/{dataset_id}").status_code == 404
        assert outsider.get(f"{CATALOG}/batches").json() == {}
        assert outsider.get(f"{CATALOG}/batches/{batch['id']}").status_code == 404
        assert outsider.get(f"{EXPORT}/batches/{batch['id']}/files").status_code == 404
        assert outsider.get(f"{EXPORT}/files/{file_id}").status_code == 404
        assert outsider.get(f"{EXPORT}/files/{file_id}", params={"path": name}).status_code == 404
        assert outsider.request("HEAD", f"{EXPORT}/files/{file_id}", params={"path": name}).status_code == 404
        new_batch = {"datasetId": dataset_id, "inputFormat": {"format": "json"}}
        assert outsider.post(IMPORT, json=new_batch).status_code == 404
        assert outsider.post(f"{IMPORT}/{batch['id']}", params={"action": "ABORT"}).status_code == 404
        assert outsider.get("/data/foundation/schemaregistry/tenant/schemas").json()["results"] == []
        assert outsider.get(
            f"/data/foundation/schemaregistry/tenant/schemas/{schema['meta:altId']}").status_code == 404
        union = outsider.get("/data/foundation/schemaregistry/tenant/unions/"
                             "https%3A%2F%2Fns.adobe.com%2Fxdm%2Fcontext%2Fprofile__union").json()
        assert "person" not in union["properties"]

    # and the owner still sees everything, unchanged
    assert prod.get(f"{CATALOG}/dataSets/{dataset_id}").json()[dataset_id]["name"] == "CRM"
    assert prod.get(f"{EXPORT}/files/{file_id}", params={"path": name}).status_code == 200
