"""Shared segmentation test data."""

from __future__ import annotations

import pytest

from tests.conftest import Api
from tests.helpers import EVENT_CLASS, create_dataset, event, ingest, profile


@pytest.fixture
def data(api: Api) -> dict[str, str]:
    """Ann (10 points, a purchase), Bob (3 points, a page view), Cy (20 points); identities CRMID + email."""
    crm = create_dataset(api, "CRM")
    web = create_dataset(api, "Web", schema_id=EVENT_CLASS)
    assert ingest(api, crm, [profile("C1", "ann@x.com", "Ann", loyalty={"points": 10}),
                             profile("C2", "bob@x.com", "Bob", loyalty={"points": 3}),
                             profile("C3", "cy@x.com", "Cy", loyalty={"points": 20})])["status"] == "success"
    assert ingest(api, web, [
        event("e1", "1" * 38, eventType="commerce.purchases", identityMap={"CRMID": [{"id": "C1", "primary": True}]}),
        event("e2", "2" * 38, eventType="web.webpagedetails.pageViews",
              identityMap={"CRMID": [{"id": "C2", "primary": True}]}),
    ])["status"] == "success"
    return {"crm": crm, "web": web}
