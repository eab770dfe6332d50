"""Synthetic XDM data for the demo, the tests and the benchmarks (`openprofile generate`).

`generate_dataset(out_dir, profiles=N, seed=S)` invents N *people* and writes what an AEP customer would
ingest about them, as Parquet files shaped the way AEP stores XDM (nested objects are Arrow structs,
`identityMap` is an Arrow map), plus a `manifest.json`::

    out_dir/
      crm/part-00000.parquet       XDM Individual Profile  https://ns.adobe.com/xdm/context/profile
      loyalty/part-00000.parquet   XDM Individual Profile  https://ns.adobe.com/xdm/context/profile
      events/part-00000.parquet    XDM ExperienceEvent     https://ns.adobe.com/xdm/context/experienceevent
      manifest.json

A dataset with more than `rows_per_file` records is split into `part-00000`, `part-00001`, ...
Older `part-*.parquet` files in those three folders are deleted first, so a folder always holds one run.

**Determinism.** The output depends only on the arguments other than `out_dir` and `rows_per_file`: the
same seed gives the same rows, and `rows_per_file` only decides where files are cut.  Time is never read
from the clock: every timestamp is placed relative to a *reference time* derived from the seed,
`reference_time(seed)` = 2025-01-01T00:00:00Z + (seed mod 365) days.  A person's attributes do not depend
on `events_per_profile` or `fragments_per_profile`, so runs that differ only in those share the same people.

**People.** Person `i` (0-based) has these identities (namespace code: value):

- `CRMID`: `CRM-00000042` (8 digits, more when N > 10^8);
- `email`: `firstname.lastname42@example.com` (lower case; domain example.com, example.org or example.net);
- `phone`: `+15550000042` (E.164-like; 7 digits after `+1555`, more when N > 10^7);
- `ECID`: 1 to 3 Experience Cloud IDs of exactly 38 digits (one per device/browser; unique, since the
  last 12 digits encode the person and the device).

**crm** — one record per person, primary identity `CRMID`; `identityMap` also carries the `email`.
Columns: `person` {`name` {`firstName`, `lastName`}, `birthDate` (`YYYY-MM-DD`, null for ~10%),
`gender` (male|female|non_specific|not_specified)}, `personalEmail.address` (the email), `mobilePhone.number`
(the phone; struct null for ~15%), `homeAddress` {`city`, `countryCode`, `postalCode`}, `workAddress.country`
(null struct for ~30%), `loyalty` {`tier`, `points`, `joinDate`} (null for ~88%: only ~20% of loyalty members
have a tier in CRM, and it always *differs* from their loyalty record's tier; `points`/`joinDate` are null),
`extSourceSystemAudit.lastUpdatedDate` (present on ~70%), `segmentMembership` (~40% of records:
namespace `ups`, 1 to 4 of the `SEGMENTS` ids, each {`status`: realized|existing|exited,
`lastQualificationTime`}), `identityMap`.

**loyalty** — ~60% of people have one loyalty record, with `loyalty` {`tier` (bronze|silver|gold|platinum),
`points` (int64), `joinDate` (`YYYY-MM-DD`)}, `person.name.firstName`, `mobilePhone.number`,
`personalEmail.address`, `extSourceSystemAudit.lastUpdatedDate` (~50%), `identityMap`
(the other `person` fields are null).

- ~90% of them are *linked*: primary identity `email` (the same value as in CRM, which is what links the
  two records), plus the person's `phone` (not primary) when `mobilePhone.number` is set (~70%).
  Conflicts with CRM: `personalEmail.address` has another domain for ~15% (the identity in `identityMap`
  stays the linking one) and `person.name.firstName` is another name for ~10%.
- ~10% are *unlinked*: their only identity is a `phone` (primary) of the form `+447000000042` that appears
  nowhere else (not in CRM, not in events), and `personalEmail` is null.  These people therefore show up
  as two separate profiles.

**fragments_per_profile** is the number of profile fragments a person with a linked loyalty record has:

- 1: crm only (the loyalty dataset is written but empty);
- 2 (default): crm + loyalty, as above — a person has 1 or 2 fragments;
- 3: additionally, every person gets a second crm record, a "legacy import" whose only identity is the
  `email` (primary).  It repeats the names and email but conflicts with the first crm record: another
  `homeAddress` (always another city, with its own postal code), another `lastName` (~10%), another
  `birthDate` (~25%; set even where the first record has none); `gender`, `mobilePhone`, `workAddress`,
  `loyalty` and `segmentMembership` are null and `lastUpdatedDate` is always set, 2 to 5 years old.
  The crm dataset then holds 2N records and a person with a linked loyalty record has 3 fragments
  (crm + legacy crm + loyalty, all sharing the email), the others 2.  The first crm records and the
  loyalty records are the same as with 2.

**events** — exactly `N * events_per_profile` ExperienceEvents, each for a person drawn uniformly from
its block of `PERSON_BLOCK` people (so per person the count varies around the mean; events are not
sorted by time).  Columns: `_id` (UUID v4, unique), `timestamp` in
[reference - 90 days, reference), `eventType` (web.webpagedetails.pageViews 55%,
web.webinteraction.linkClicks 10%, commerce.productViews 20%, commerce.productListAdds 8%,
commerce.purchases 7%), `web.webPageDetails` {`name`, `URL`}, `environment.browserDetails` {`name`,
`version`} (fixed per ECID), `commerce.order` {`priceTotal`, `currencyCode`="USD"} (purchases only, the
sum of the items), `productListItems` [{`SKU`, `name`, `quantity`, `priceTotal`}] (commerce events only:
1 item for views and adds, 1 to 4 for purchases), `identityMap`: one of the person's ECIDs, primary,
`ambiguous`.  ~30% of events also carry the person's `CRMID` (70% of them) or `email` (30%), with
`authenticatedState` `authenticated` (90%) or `loggedOut` (10%): these events are what tie ECIDs to people.

**Types.** `identityMap` is `map<string, list<struct<id, primary, authenticatedState>>>`,
`segmentMembership` is `map<string, map<string, struct<status, lastQualificationTime>>>`, timestamps are
`timestamp[us, tz=UTC]`, integers int64, money float64; absent values are null (a struct whose leaves
would all be null is null itself).  A top-level field has the same type in every dataset that has it
(as an XDM field group does), e.g. `loyalty` is the full {tier, points, joinDate} struct in crm too.

**Order.** Records come a block of `PERSON_BLOCK` people at a time, people in CRMID order within a
block; with fragments_per_profile=3 a block's legacy crm records follow its first crm records.

Everything is built with NumPy/PyArrow a block at a time (at most `EVENT_CHUNK` events at once) and
encoded to Parquet (snappy) on one writer thread per dataset, so memory stays bounded for any N.
"""

from __future__ import annotations

import itertools
import json
import math
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = [
    "DATASETS",
    "EVENTS_SCHEMA",
    "EVENT_CHUNK",
    "EVENT_CLASS",
    "IDENTITY_MAP_TYPE",
    "PERSON_BLOCK",
    "PROFILE_CLASS",
    "PROFILE_SCHEMAS",
    "SEGMENTS",
    "SEGMENT_MEMBERSHIP_TYPE",
    "GeneratedData",
    "GeneratedFile",
    "generate_dataset",
    "reference_time",
]

PROFILE_CLASS = "https://ns.adobe.com/xdm/context/profile"
EVENT_CLASS = "https://ns.adobe.com/xdm/context/experienceevent"
DATASETS: dict[str, str] = {"crm": PROFILE_CLASS, "loyalty": PROFILE_CLASS, "events": EVENT_CLASS}

PERSON_BLOCK = 25_000
"""People generated together; fixed (not derived from the arguments) so the data does not depend on it."""
EVENT_CHUNK = 250_000
"""Most events built in memory at once."""

_REFERENCE_BASE = datetime(2025, 1, 1, tzinfo=UTC)
_US_PER_DAY = 86_400_000_000
_EVENT_WINDOW_DAYS = 90

SEGMENTS: dict[str, str] = {
    "3f1d2a6b-8c4e-4b1a-9e27-5d0c6a7b8e01": "High-value customers",
    "7a2e9c41-0b3d-4f58-a6c2-1e9d8b7a6c02": "Cart abandoners (last 30 days)",
    "c4b8e1d2-5a6f-4c3e-8b91-2f7a0d3e9c03": "Newsletter subscribers",
    "e9d0f3a5-2c1b-4e7d-9a48-6b5c4d3e2f04": "Lapsed purchasers",
}
"""The well-known segment ids of `segmentMembership.ups`, with a human name for the demo."""

# --------------------------------------------------------------------------------------------------
# Arrow types

TS = pa.timestamp("us", tz="UTC")
IDENTITY_TYPE = pa.struct(
    [
        pa.field("id", pa.string()),
        pa.field("primary", pa.bool_()),
        pa.field("authenticatedState", pa.string()),
    ]
)
IDENTITY_MAP_TYPE = pa.map_(pa.string(), pa.list_(IDENTITY_TYPE))
SEGMENT_STATUS_TYPE = pa.struct([pa.field("status", pa.string()), pa.field("lastQualificationTime", TS)])
SEGMENT_MEMBERSHIP_TYPE = pa.map_(pa.string(), pa.map_(pa.string(), SEGMENT_STATUS_TYPE))

_PERSON = pa.struct(
    [
        pa.field("name", pa.struct([pa.field("firstName", pa.string()), pa.field("lastName", pa.string())])),
        pa.field("birthDate", pa.string()),
        pa.field("gender", pa.string()),
    ]
)
_PERSONAL_EMAIL = pa.struct([pa.field("address", pa.string())])
_MOBILE_PHONE = pa.struct([pa.field("number", pa.string())])
_HOME_ADDRESS = pa.struct(
    [pa.field("city", pa.string()), pa.field("countryCode", pa.string()), pa.field("postalCode", pa.string())]
)
_WORK_ADDRESS = pa.struct([pa.field("country", pa.string())])
_LOYALTY = pa.struct([pa.field("tier", pa.string()), pa.field("points", pa.int64()), pa.field("joinDate", pa.string())])
_AUDIT = pa.struct([pa.field("lastUpdatedDate", TS)])

CRM_SCHEMA = pa.schema(
    [
        pa.field("person", _PERSON),
        pa.field("personalEmail", _PERSONAL_EMAIL),
        pa.field("mobilePhone", _MOBILE_PHONE),
        pa.field("homeAddress", _HOME_ADDRESS),
        pa.field("workAddress", _WORK_ADDRESS),
        pa.field("loyalty", _LOYALTY),
        pa.field("extSourceSystemAudit", _AUDIT),
        pa.field("segmentMembership", SEGMENT_MEMBERSHIP_TYPE),
        pa.field("identityMap", IDENTITY_MAP_TYPE),
    ]
)
LOYALTY_SCHEMA = pa.schema(
    [
        pa.field("person", _PERSON),
        pa.field("personalEmail", _PERSONAL_EMAIL),
        pa.field("mobilePhone", _MOBILE_PHONE),
        pa.field("loyalty", _LOYALTY),
        pa.field("extSourceSystemAudit", _AUDIT),
        pa.field("identityMap", IDENTITY_MAP_TYPE),
    ]
)
PROFILE_SCHEMAS: dict[str, pa.Schema] = {"crm": CRM_SCHEMA, "loyalty": LOYALTY_SCHEMA}

_WEB = pa.struct([pa.field("webPageDetails", pa.struct([pa.field("name", pa.string()), pa.field("URL", pa.string())]))])
_ENVIRONMENT = pa.struct(
    [pa.field("browserDetails", pa.struct([pa.field("name", pa.string()), pa.field("version", pa.string())]))]
)
_COMMERCE = pa.struct(
    [
        pa.field(
            "order",
            pa.struct([pa.field("priceTotal", pa.float64()), pa.field("currencyCode", pa.string())]),
        )
    ]
)
_PRODUCT_ITEM = pa.struct(
    [
        pa.field("SKU", pa.string()),
        pa.field("name", pa.string()),
        pa.field("quantity", pa.int64()),
        pa.field("priceTotal", pa.float64()),
    ]
)
EVENTS_SCHEMA = pa.schema(
    [
        pa.field("_id", pa.string()),
        pa.field("timestamp", TS),
        pa.field("eventType", pa.string()),
        pa.field("web", _WEB),
        pa.field("environment", _ENVIRONMENT),
        pa.field("commerce", _COMMERCE),
        pa.field("productListItems", pa.list_(_PRODUCT_ITEM)),
        pa.field("identityMap", IDENTITY_MAP_TYPE),
    ]
)
_SCHEMAS: dict[str, pa.Schema] = {"crm": CRM_SCHEMA, "loyalty": LOYALTY_SCHEMA, "events": EVENTS_SCHEMA}

# --------------------------------------------------------------------------------------------------
# Pools of values, indexed by random integers


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_FIRST_NAMES = _words(
    "James Mary John Patricia Robert Jennifer Michael Linda David Elizabeth William Barbara Richard Susan "
    "Joseph Jessica Thomas Sarah Charles Karen Christopher Lisa Daniel Nancy Matthew Betty Anthony Sandra "
    "Mark Margaret Donald Ashley Steven Kimberly Andrew Emily Paul Donna Joshua Michelle Kenneth Carol "
    "Kevin Amanda Brian Melissa George Deborah Timothy Stephanie Ronald Rebecca Jason Laura Edward Helen "
    "Jeffrey Sharon Ryan Cynthia Jacob Kathleen Gary Amy Nicholas Angela Eric Shirley Jonathan Anna "
    "Stephen Brenda Larry Pamela Justin Emma Scott Nicole Brandon Samantha Benjamin Katherine Samuel "
    "Christine Gregory Debra Alexander Rachel Frank Carolyn Raymond Janet Patrick Maria Jack Olivia Lukas "
    "Sophie Hiroshi Yuki Pierre Camille Mateo Lucia Arjun Priya Wei Mei Lars Ingrid Omar Fatima"
)
_LAST_NAMES = _words(
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez "
    "Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark "
    "Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams "
    "Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips Evans Turner Diaz Parker "
    "Cruz Edwards Collins Reyes Stewart Morris Morales Murphy Cook Rogers Gutierrez Ortiz Morgan Cooper "
    "Peterson Bailey Reed Kelly Howard Ramos Kim Cox Ward Richardson Watson Brooks Chavez Wood James "
    "Bennett Gray Mendoza Ruiz Hughes Price Alvarez Castillo Sanders Patel Myers Long Ross Foster Mueller "
    "Schmidt Dubois Moreau Tanaka Suzuki Rossi Bianchi Silva Santos Larsen Berg Chen Wang"
)
_EMAIL_DOMAINS = ("example.com", "example.org", "example.net")
_CITIES = (  # city, ISO country code, digits in the postal code, weight
    ("New York", "US", 5, 0.14),
    ("San Jose", "US", 5, 0.08),
    ("Chicago", "US", 5, 0.08),
    ("Austin", "US", 5, 0.06),
    ("Seattle", "US", 5, 0.06),
    ("Toronto", "CA", 6, 0.06),
    ("London", "GB", 6, 0.08),
    ("Paris", "FR", 5, 0.06),
    ("Berlin", "DE", 5, 0.06),
    ("Munich", "DE", 5, 0.04),
    ("Madrid", "ES", 5, 0.05),
    ("Amsterdam", "NL", 4, 0.04),
    ("Sydney", "AU", 4, 0.05),
    ("Tokyo", "JP", 7, 0.05),
    ("Bangalore", "IN", 6, 0.05),
    ("Sao Paulo", "BR", 8, 0.04),
)
_CITY_WEIGHTS = tuple(c[3] for c in _CITIES)
_WORK_COUNTRIES = (
    "United States",
    "Canada",
    "United Kingdom",
    "France",
    "Germany",
    "Spain",
    "Netherlands",
    "Australia",
    "Japan",
    "India",
    "Brazil",
)
_GENDERS = ("male", "female", "non_specific", "not_specified")
_GENDER_WEIGHTS = (0.47, 0.47, 0.02, 0.04)
_TIERS = ("bronze", "silver", "gold", "platinum")
_TIER_WEIGHTS = (0.5, 0.3, 0.15, 0.05)
_TIER_POINTS = (0, 5_000, 20_000, 60_000)
_STATES = ("ambiguous", "authenticated", "loggedOut")
_AMBIGUOUS, _AUTHENTICATED, _LOGGED_OUT = 0, 1, 2
_NAMESPACES = ("CRMID", "email", "phone", "ECID")
_NS_CRMID, _NS_EMAIL, _NS_PHONE, _NS_ECID = 0, 1, 2, 3
_SEGMENT_STATUSES = ("realized", "existing", "exited")
_SEGMENT_STATUS_WEIGHTS = (0.5, 0.35, 0.15)

_EVENT_TYPES = (
    "web.webpagedetails.pageViews",
    "web.webinteraction.linkClicks",
    "commerce.productViews",
    "commerce.productListAdds",
    "commerce.purchases",
)
_EVENT_TYPE_WEIGHTS = (0.55, 0.10, 0.20, 0.08, 0.07)
_PAGE_VIEW, _LINK_CLICK, _PRODUCT_VIEW, _LIST_ADD, _PURCHASE = range(5)
_SITE = "https://shop.example.com"
_GENERAL_PAGES = (
    ("home", "/"),
    ("search results", "/search"),
    ("category: running", "/c/running"),
    ("category: outdoor", "/c/outdoor"),
    ("category: home office", "/c/home-office"),
    ("category: kitchen", "/c/kitchen"),
    ("deals", "/deals"),
    ("store locator", "/stores"),
    ("account", "/account"),
    ("help", "/help"),
)
_CART_PAGE = ("cart", "/cart")
_CONFIRMATION_PAGE = ("order confirmation", "/checkout/confirmation")
_PRODUCTS = (  # name, unit price (USD)
    ("Trail Running Shoe", 129.99),
    ("Road Running Shoe", 119.99),
    ("Running Socks (3 pack)", 17.5),
    ("Hydration Vest", 89.0),
    ("GPS Sports Watch", 299.0),
    ("Rain Jacket", 149.0),
    ("Fleece Pullover", 69.95),
    ("Hiking Backpack 30L", 139.0),
    ("Trekking Poles", 79.0),
    ("Insulated Water Bottle", 34.99),
    ("Camping Headlamp", 44.5),
    ("Two-Person Tent", 329.0),
    ("Sleeping Bag", 189.0),
    ("Ergonomic Office Chair", 449.0),
    ("Standing Desk", 599.0),
    ("Desk Lamp", 59.99),
    ("Noise-Cancelling Headphones", 279.0),
    ("Wireless Keyboard", 99.0),
    ("Chef's Knife", 119.0),
    ("Cast Iron Skillet", 49.95),
    ("Espresso Machine", 699.0),
    ("Coffee Grinder", 149.99),
    ("Stand Mixer", 379.0),
    ("Bamboo Cutting Board", 29.99),
)
_BROWSERS = (  # name, version, weight
    ("Chrome", "124.0", 0.12),
    ("Chrome", "125.0", 0.18),
    ("Chrome", "126.0", 0.25),
    ("Safari", "17.4", 0.08),
    ("Safari", "17.5", 0.12),
    ("Firefox", "126.0", 0.04),
    ("Firefox", "127.0", 0.03),
    ("Edge", "125.0", 0.06),
    ("Edge", "126.0", 0.05),
    ("Samsung Internet", "25.0", 0.07),
)

_STREAM_PEOPLE, _STREAM_CRM, _STREAM_LOYALTY, _STREAM_LEGACY, _STREAM_EVENTS = range(5)

_Int = npt.NDArray[np.int64]
_Bool = npt.NDArray[np.bool_]


def _strings(values: Sequence[str]) -> pa.Array:
    return pa.array(list(values), pa.string())


def _weights(values: Sequence[float]) -> npt.NDArray[np.float64]:
    w: npt.NDArray[np.float64] = np.asarray(values, dtype=np.float64)
    return w / float(w.sum())


_P_FIRST = _strings(_FIRST_NAMES)
_P_LAST = _strings(_LAST_NAMES)
_P_FIRST_LOWER = _strings([n.lower() for n in _FIRST_NAMES])
_P_LAST_LOWER = _strings([n.lower() for n in _LAST_NAMES])
_P_DOMAINS = _strings(_EMAIL_DOMAINS)
_P_CITY = _strings([c[0] for c in _CITIES])
_P_CITY_CC = _strings([c[1] for c in _CITIES])
_CITY_POSTAL_DIGITS = np.array([c[2] for c in _CITIES], dtype=np.int64)
_P_WORK_COUNTRIES = _strings(_WORK_COUNTRIES)
_P_GENDERS = _strings(_GENDERS)
_P_TIERS = _strings(_TIERS)
_P_STATES = _strings(_STATES)
_P_NAMESPACES = _strings(_NAMESPACES)
_P_SEGMENT_IDS = _strings(list(SEGMENTS))
_P_SEGMENT_STATUSES = _strings(_SEGMENT_STATUSES)
_P_EVENT_TYPES = _strings(_EVENT_TYPES)
_PRODUCT_SKUS = [f"SKU-{10001 + i}" for i in range(len(_PRODUCTS))]
_P_SKUS = _strings(_PRODUCT_SKUS)
_P_PRODUCT_NAMES = _strings([p[0] for p in _PRODUCTS])
_PRODUCT_PRICES = np.array([p[1] for p in _PRODUCTS], dtype=np.float64)
# Page pool: the general pages, the cart, the confirmation, then one page per product.
_PAGES = [*_GENERAL_PAGES, _CART_PAGE, _CONFIRMATION_PAGE] + [
    (p[0], f"/p/{sku.lower()}") for p, sku in zip(_PRODUCTS, _PRODUCT_SKUS, strict=True)
]
_P_PAGE_NAMES = _strings([p[0] for p in _PAGES])
_P_PAGE_URLS = _strings([_SITE + p[1] for p in _PAGES])
_CART_PAGE_INDEX = len(_GENERAL_PAGES)
_CONFIRMATION_PAGE_INDEX = _CART_PAGE_INDEX + 1
_PRODUCT_PAGE_BASE = _CONFIRMATION_PAGE_INDEX + 1
_P_BROWSER_NAMES = _strings([b[0] for b in _BROWSERS])
_P_BROWSER_VERSIONS = _strings([b[1] for b in _BROWSERS])


# --------------------------------------------------------------------------------------------------
# Public API


@dataclass(frozen=True)
class GeneratedFile:
    """One Parquet part file of a dataset."""

    dataset: str
    path: Path
    records: int


@dataclass(frozen=True)
class GeneratedData:
    """What `generate_dataset` wrote, so callers need not re-read the manifest."""

    out_dir: Path
    seed: int
    profiles: int
    files: list[GeneratedFile]

    def files_for(self, dataset: str) -> list[GeneratedFile]:
        """The part files of `dataset` (crm, loyalty or events), in order."""
        _check_dataset(dataset)
        return [f for f in self.files if f.dataset == dataset]

    def records(self, dataset: str) -> int:
        """How many records `dataset` holds over all its files."""
        return sum(f.records for f in self.files_for(dataset))


def reference_time(seed: int) -> datetime:
    """The instant the data is "generated at": events fall in the 90 days before it.

    Derived from the seed rather than the clock so a seed always yields the same bytes.
    """
    return _REFERENCE_BASE + timedelta(days=seed % 365)


def generate_dataset(
    out_dir: Path,
    profiles: int,
    seed: int = 42,
    events_per_profile: int = 10,
    fragments_per_profile: int = 2,
    rows_per_file: int = 1_000_000,
) -> GeneratedData:
    """Write the crm, loyalty and events datasets and `manifest.json` under `out_dir` (see the module doc)."""
    if profiles < 0:
        raise ValueError("profiles must be >= 0")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    if events_per_profile < 0:
        raise ValueError("events_per_profile must be >= 0")
    if fragments_per_profile not in (1, 2, 3):
        raise ValueError("fragments_per_profile must be 1, 2 or 3")
    if rows_per_file < 1:
        raise ValueError("rows_per_file must be >= 1")

    out_dir = Path(out_dir)
    ref_us = int(reference_time(seed).timestamp()) * 1_000_000
    ctx = _Context(seed=seed, profiles=profiles, ref_us=ref_us)
    writers = {name: _PartWriter(name, out_dir, _SCHEMAS[name], rows_per_file) for name in DATASETS}
    with _Writers(writers) as write:
        for start in range(0, profiles, PERSON_BLOCK):
            block = start // PERSON_BLOCK
            people = _people(ctx, block, start, min(start + PERSON_BLOCK, profiles))
            write("crm", _crm(ctx, people))
            if fragments_per_profile >= 2:
                write("loyalty", _loyalty(ctx, people))
            if fragments_per_profile >= 3:
                write("crm", _legacy_crm(ctx, people))
            for sub, (lo, hi) in enumerate(_event_slices(people.n * events_per_profile)):
                write("events", _events(ctx, people, sub, hi - lo))
    files = [f for name in DATASETS for f in writers[name].files]

    result = GeneratedData(out_dir=out_dir, seed=seed, profiles=profiles, files=files)
    manifest: dict[str, Any] = {
        "generator": "openprofile.generate",
        "seed": seed,
        "profiles": profiles,
        "eventsPerProfile": events_per_profile,
        "fragmentsPerProfile": fragments_per_profile,
        "rowsPerFile": rows_per_file,
        "referenceTime": reference_time(seed).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "datasets": {
            name: {
                "xdmClass": xdm_class,
                "records": result.records(name),
                "files": [
                    {"path": f.path.relative_to(out_dir).as_posix(), "records": f.records}
                    for f in result.files_for(name)
                ],
            }
            for name, xdm_class in DATASETS.items()
        },
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return result


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")


# --------------------------------------------------------------------------------------------------
# Writing


class _PartWriter:
    """Streams tables into `part-NNNNN.parquet` files, starting a new file every `rows_per_file` rows."""

    def __init__(self, dataset: str, out_dir: Path, schema: pa.Schema, rows_per_file: int) -> None:
        self.dataset = dataset
        self.dir = out_dir / dataset
        self.schema = schema
        self.rows_per_file = rows_per_file
        self.files: list[GeneratedFile] = []
        self._writer: pq.ParquetWriter | None = None
        self._path: Path | None = None
        self._rows = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in sorted(self.dir.glob("part-*.parquet")):
            stale.unlink()

    def write(self, table: pa.Table) -> None:
        offset = 0
        while offset < table.num_rows:
            if self._writer is None:
                self._open()
            assert self._writer is not None
            take = min(self.rows_per_file - self._rows, table.num_rows - offset)
            self._writer.write_table(table.slice(offset, take))
            self._rows += take
            offset += take
            if self._rows >= self.rows_per_file:
                self._finish()

    def close(self) -> list[GeneratedFile]:
        """Close the open file; a dataset without rows still gets an empty part so readers see its schema."""
        if self._writer is not None:
            self._finish()
        if not self.files:
            self._open()
            self._finish()
        return self.files

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _open(self) -> None:
        self._path = self.dir / f"part-{len(self.files):05d}.parquet"
        self._writer = pq.ParquetWriter(self._path, self.schema, compression="snappy")
        self._rows = 0

    def _finish(self) -> None:
        assert self._writer is not None and self._path is not None
        self._writer.close()
        self.files.append(GeneratedFile(self.dataset, self._path, self._rows))
        self._writer = None
        self._path = None


class _Writers:
    """One writer thread per dataset, fed through small bounded queues.

    Parquet encoding releases the GIL, so the events file is encoded while the next chunk is built and the
    profile files are encoded beside it; chunks of a dataset are written in order, so output stays
    deterministic, and at most `depth` chunks per dataset wait in memory.
    """

    def __init__(self, writers: dict[str, _PartWriter], depth: int = 2) -> None:
        self._writers = writers
        self._queues: dict[str, queue.Queue[pa.Table | None]] = {name: queue.Queue(maxsize=depth) for name in writers}
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._run, args=(name,), name=f"openprofile-generate-{name}", daemon=True)
            for name in writers
        ]
        for t in self._threads:
            t.start()

    def __enter__(self) -> Callable[[str, pa.Table], None]:
        return self.put

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        for q in self._queues.values():
            q.put(None)
        for t in self._threads:
            t.join()
        for w in self._writers.values():
            if exc is None and not self._errors:
                w.close()
            else:
                w.abort()
        if exc is None and self._errors:
            raise RuntimeError("writing the generated data failed") from self._errors[0]

    def put(self, dataset: str, table: pa.Table) -> None:
        if self._errors:
            raise RuntimeError("writing the generated data failed") from self._errors[0]
        self._queues[dataset].put(table)

    def _run(self, dataset: str) -> None:
        q, writer = self._queues[dataset], self._writers[dataset]
        while (table := q.get()) is not None:
            if not self._errors:  # after a failure keep draining so put() never blocks forever
                try:
                    writer.write(table)
                except BaseException as exc:
                    self._errors.append(exc)


def _event_slices(total: int) -> Iterator[tuple[int, int]]:
    """Cut a block's events into near-equal slices of at most EVENT_CHUNK rows."""
    parts = max(1, math.ceil(total / EVENT_CHUNK))
    bounds = [total * i // parts for i in range(parts + 1)]
    for lo, hi in itertools.pairwise(bounds):
        if hi > lo:
            yield lo, hi


# --------------------------------------------------------------------------------------------------
# Vectorised building blocks


def _rng(ctx: _Context, stream: int, *key: int) -> np.random.Generator:
    """An independent generator per (seed, concern, block, ...) so chunks can be built in any order."""
    return np.random.default_rng([ctx.seed, stream, *key])


def _digits(values: npt.ArrayLike, width: int) -> npt.NDArray[np.uint8]:
    """ASCII decimal digits of non-negative integers, zero-padded to `width`: an (n, width) byte matrix."""
    v = np.asarray(values).astype(np.uint64)
    out = np.empty((v.shape[0], width), dtype=np.uint8)
    for j in range(width - 1, -1, -1):
        out[:, j] = (v % np.uint64(10)).astype(np.uint8) + ord("0")
        v = v // np.uint64(10)
    return out


def _fixed(chars: npt.NDArray[np.uint8]) -> pa.Array:
    """A string array from an (n, width) ASCII matrix, sharing its memory (no per-row Python objects)."""
    chars = np.ascontiguousarray(chars, dtype=np.uint8)
    n, width = chars.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int64)
    return pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(chars)]).cast(
        pa.string()
    )


def _prefixed(prefix: str, values: npt.NDArray[Any], width: int) -> pa.Array:
    """`prefix` followed by the zero-padded digits of each value, e.g. CRM-00000042."""
    head = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    chars = np.empty((len(values), len(head) + width), dtype=np.uint8)
    chars[:, : len(head)] = head
    chars[:, len(head) :] = _digits(values, width)
    return _fixed(chars)


# "00".."ff" as 2-byte ASCII pairs, so one lookup turns a byte into its two hex digits.
_HEX_PAIRS = np.frombuffer("".join(f"{i:02x}" for i in range(256)).encode("ascii"), dtype=np.uint16)


def _uuid4(rng: np.random.Generator, n: int) -> pa.Array:
    """Random version-4 UUID strings."""
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    hexes = _HEX_PAIRS[raw].view(np.uint8)  # (n, 32)
    chars = np.empty((n, 36), dtype=np.uint8)
    chars[:, [8, 13, 18, 23]] = ord("-")
    for src, dst, length in ((0, 0, 8), (8, 9, 4), (12, 14, 4), (16, 19, 4), (20, 24, 12)):
        chars[:, dst : dst + length] = hexes[:, src : src + length]
    return _fixed(chars)


def _take(pool: pa.Array, idx: npt.NDArray[Any]) -> pa.Array:
    return pool.take(pa.array(np.asarray(idx, dtype=np.int64)))


def _null_where(arr: pa.Array, null: _Bool | None) -> pa.Array:
    """`arr` with nulls where `null` is true."""
    if null is None or not null.any():
        return arr
    return pc.if_else(pa.array(~null), arr, pa.scalar(None, arr.type))


def _mask(null: _Bool | None) -> pa.Array | None:
    return None if null is None or not null.any() else pa.array(null)


def _struct(t: pa.StructType, children: Sequence[pa.Array], null: _Bool | None = None) -> pa.Array:
    return pa.StructArray.from_arrays(list(children), fields=list(t), mask=_mask(null))


def _all_null(t: pa.DataType, n: int) -> pa.Array:
    return pa.nulls(n, t)


def _timestamps(micros: _Int, null: _Bool | None = None) -> pa.Array:
    return pa.array(micros, type=TS, mask=null if null is not None and null.any() else None)


def _dates(days: _Int, null: _Bool | None = None) -> pa.Array:
    """`YYYY-MM-DD` strings from days since 1970-01-01."""
    text = pa.array(days.astype(np.int32), type=pa.date32()).cast(pa.string())
    return _null_where(text, null)


def _choice(rng: np.random.Generator, weights: Sequence[float], n: int) -> _Int:
    return rng.choice(len(weights), size=n, p=_weights(weights)).astype(np.int64)


def _other(rng: np.random.Generator, current: _Int, pool_size: int) -> _Int:
    """A pool index different from `current`, for deliberately conflicting values."""
    return (current + rng.integers(1, pool_size, size=current.shape[0])) % pool_size


@dataclass(frozen=True)
class _Slot:
    """One possible identityMap entry: a namespace and, per row, its id, presence, primary flag and state.

    The id of row r is `pool[pick[r]]` (`pool[r]` without `pick`), so ids are gathered once, only for the
    rows that have the entry.
    """

    namespace: int
    pool: pa.Array
    pick: _Int | None
    present: _Bool
    primary: _Bool
    state: _Int


def _identity_map(n: int, slots: Sequence[_Slot]) -> pa.Array:
    """identityMap rows from slots: each present slot is a `namespace -> [identity]` entry, in slot order."""
    present = np.stack([s.present for s in slots], axis=1)
    rows, cols = np.nonzero(present)  # row-major: entries of a row are adjacent, in slot order
    bases = np.cumsum([0] + [len(s.pool) for s in slots[:-1]])
    where = np.stack(
        [base + (s.pick if s.pick is not None else np.arange(n)) for base, s in zip(bases, slots, strict=True)],
        axis=1,
    )
    ids = _take(pa.concat_arrays([s.pool for s in slots]), where[rows, cols])
    primary = np.stack([s.primary for s in slots], axis=1)[rows, cols]
    states = _take(_P_STATES, np.stack([s.state for s in slots], axis=1)[rows, cols])
    namespaces = np.array([s.namespace for s in slots], dtype=np.int64)[cols]
    identities = _struct(IDENTITY_TYPE, [ids, pa.array(primary), states])
    lists = pa.ListArray.from_arrays(
        pa.array(np.arange(len(rows) + 1, dtype=np.int32)), identities, type=pa.list_(IDENTITY_TYPE)
    )
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(present.sum(axis=1), out=offsets[1:])
    return pa.MapArray.from_arrays(pa.array(offsets), _take(_P_NAMESPACES, namespaces), lists, type=IDENTITY_MAP_TYPE)


def _const(n: int, value: int) -> _Int:
    return np.full(n, value, dtype=np.int64)


def _flag(n: int, value: bool) -> _Bool:
    return np.full(n, value, dtype=np.bool_)


# --------------------------------------------------------------------------------------------------
# People


@dataclass(frozen=True)
class _Context:
    seed: int
    profiles: int
    ref_us: int

    @property
    def ref_days(self) -> int:
        return self.ref_us // _US_PER_DAY

    def width(self, minimum: int) -> int:
        """Digits needed to number every person, at least `minimum`."""
        return max(minimum, len(str(max(self.profiles - 1, 0))))


@dataclass(frozen=True)
class _People:
    """The identities and core attributes of one block of people, shared by all datasets."""

    block: int
    n: int
    index: _Int
    first: _Int
    last: _Int
    domain: _Int
    crmid: pa.Array
    email: pa.Array
    phone: pa.Array
    ecid_count: _Int
    ecids: pa.Array  # 3 * n: device k of person j at k * n + j
    browser: npt.NDArray[np.int64]  # (n, 3): browser of each device
    has_loyalty: _Bool
    unlinked: _Bool
    tier: _Int
    birth_days: _Int
    city: _Int


def _people(ctx: _Context, block: int, start: int, stop: int) -> _People:
    rng = _rng(ctx, _STREAM_PEOPLE, block)
    n = stop - start
    index = np.arange(start, stop, dtype=np.int64)
    first = rng.integers(0, len(_FIRST_NAMES), n)
    last = rng.integers(0, len(_LAST_NAMES), n)
    domain = _choice(rng, (0.6, 0.25, 0.15), n)
    email = pc.binary_join_element_wise(
        _take(_P_FIRST_LOWER, first),
        ".",
        _take(_P_LAST_LOWER, last),
        pa.array(index).cast(pa.string()),
        "@",
        _take(_P_DOMAINS, domain),
        "",
    )
    ecid_count = _choice(rng, (0.5, 0.35, 0.15), n) + 1
    ecid_parts = []
    for k in range(3):
        chars = np.concatenate(
            [
                _digits(rng.integers(10**12, 10**13, n), 13),
                _digits(rng.integers(0, 10**13, n), 13),
                _digits(index * 3 + k, 12),
            ],
            axis=1,
        )
        ecid_parts.append(_fixed(chars))
    browser = _choice(rng, [b[2] for b in _BROWSERS], 3 * n).reshape(n, 3)
    has_loyalty = rng.random(n) < 0.6
    unlinked = has_loyalty & (rng.random(n) < 0.1)
    tier = _choice(rng, _TIER_WEIGHTS, n)
    birth_days = rng.integers(-7305, 13149, n)  # 1950-01-01 .. 2005-12-31
    city = _choice(rng, _CITY_WEIGHTS, n)
    return _People(
        block=block,
        n=n,
        index=index,
        first=first,
        last=last,
        domain=domain,
        crmid=_prefixed("CRM-", index, ctx.width(8)),
        email=email,
        phone=_prefixed("+1555", index, ctx.width(7)),
        ecid_count=ecid_count,
        ecids=pa.concat_arrays(ecid_parts),
        browser=browser,
        has_loyalty=has_loyalty,
        unlinked=unlinked,
        tier=tier,
        birth_days=birth_days,
        city=city,
    )


def _postal_codes(rng: np.random.Generator, city: _Int) -> pa.Array:
    """Numeric postal codes with the city's number of digits."""
    n = city.shape[0]
    digits = _digits(rng.integers(0, 10**8, n), 8)
    lengths = _CITY_POSTAL_DIGITS[city]
    flat = digits.reshape(-1)
    keep = np.arange(8)[None, :] >= (8 - lengths)[:, None]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = np.ascontiguousarray(flat[keep.reshape(-1)])
    return pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)]).cast(
        pa.string()
    )


def _segment_membership(rng: np.random.Generator, ctx: _Context, present: _Bool) -> pa.Array:
    """`{"ups": {segmentId: {status, lastQualificationTime}}}` on `present` rows, null elsewhere."""
    n = present.shape[0]
    holders = int(present.sum())
    seg_count = len(SEGMENTS)
    member = rng.random((holders, seg_count)) < 0.45
    member[np.arange(holders), rng.integers(0, seg_count, holders)] = True  # at least one segment
    rows, cols = np.nonzero(member)
    m = rows.shape[0]
    status = _take(_P_SEGMENT_STATUSES, _choice(rng, _SEGMENT_STATUS_WEIGHTS, m))
    qualified = _timestamps(ctx.ref_us - 1 - rng.integers(0, _EVENT_WINDOW_DAYS * _US_PER_DAY, m))
    inner_offsets = np.zeros(holders + 1, dtype=np.int32)
    np.cumsum(member.sum(axis=1), out=inner_offsets[1:])
    inner = pa.MapArray.from_arrays(
        pa.array(inner_offsets),
        _take(_P_SEGMENT_IDS, cols),
        _struct(SEGMENT_STATUS_TYPE, [status, qualified]),
        type=SEGMENT_MEMBERSHIP_TYPE.item_type,
    )
    outer_offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(present, out=outer_offsets[1:])
    return pa.MapArray.from_arrays(
        pa.array(outer_offsets),
        pa.repeat(pa.scalar("ups"), holders),
        inner,
        type=SEGMENT_MEMBERSHIP_TYPE,
        mask=pa.array(~present),
    )


def _crm(ctx: _Context, p: _People) -> pa.Table:
    """The primary CRM record of each person."""
    rng = _rng(ctx, _STREAM_CRM, p.block)
    n = p.n
    gender = _choice(rng, _GENDER_WEIGHTS, n)
    no_birth = rng.random(n) < 0.10
    city = p.city
    postal = _postal_codes(rng, city)
    no_phone = rng.random(n) < 0.15
    work = rng.integers(0, len(_WORK_COUNTRIES), n)
    no_work = rng.random(n) < 0.30
    crm_tier = p.has_loyalty & (rng.random(n) < 0.20)
    tier = _other(rng, p.tier, len(_TIERS))
    audited = rng.random(n) < 0.70
    updated = ctx.ref_us - 1 - rng.integers(0, 730 * _US_PER_DAY, n)
    segmented = rng.random(n) < 0.40
    segments = _segment_membership(rng, ctx, segmented)

    person = _struct(
        _PERSON,
        [
            _struct(_PERSON[0].type, [_take(_P_FIRST, p.first), _take(_P_LAST, p.last)]),
            _dates(p.birth_days, no_birth),
            _take(_P_GENDERS, gender),
        ],
    )
    identity_map = _identity_map(
        n,
        [
            _Slot(_NS_CRMID, p.crmid, None, _flag(n, True), _flag(n, True), _const(n, _AMBIGUOUS)),
            _Slot(_NS_EMAIL, p.email, None, _flag(n, True), _flag(n, False), _const(n, _AMBIGUOUS)),
        ],
    )
    null_tier = pa.nulls(n, pa.int64()), pa.nulls(n, pa.string())
    columns = [
        person,
        _struct(_PERSONAL_EMAIL, [p.email]),
        _struct(_MOBILE_PHONE, [_null_where(p.phone, no_phone)], no_phone),
        _struct(_HOME_ADDRESS, [_take(_P_CITY, city), _take(_P_CITY_CC, city), postal]),
        _struct(_WORK_ADDRESS, [_null_where(_take(_P_WORK_COUNTRIES, work), no_work)], no_work),
        _struct(_LOYALTY, [_null_where(_take(_P_TIERS, tier), ~crm_tier), *null_tier], ~crm_tier),
        _struct(_AUDIT, [_timestamps(updated, ~audited)], ~audited),
        segments,
        identity_map,
    ]
    return pa.Table.from_arrays(columns, schema=CRM_SCHEMA)


def _legacy_crm(ctx: _Context, p: _People) -> pa.Table:
    """The second, email-keyed CRM record of each person when fragments_per_profile=3."""
    rng = _rng(ctx, _STREAM_LEGACY, p.block)
    n = p.n
    city = _other(rng, p.city, len(_CITIES))  # they have moved since
    postal = _postal_codes(rng, city)
    other_last = rng.random(n) < 0.10
    last = np.where(other_last, _other(rng, p.last, len(_LAST_NAMES)), p.last)
    other_birth = rng.random(n) < 0.25
    shift = rng.integers(1, 366, n) * np.where(rng.random(n) < 0.5, -1, 1)
    birth = np.where(other_birth, p.birth_days + shift, p.birth_days)
    updated = ctx.ref_us - rng.integers(730 * _US_PER_DAY, 1826 * _US_PER_DAY, n)

    person = _struct(
        _PERSON,
        [
            _struct(_PERSON[0].type, [_take(_P_FIRST, p.first), _take(_P_LAST, last)]),
            _dates(birth),
            pa.nulls(n, pa.string()),
        ],
    )
    identity_map = _identity_map(
        n, [_Slot(_NS_EMAIL, p.email, None, _flag(n, True), _flag(n, True), _const(n, _AMBIGUOUS))]
    )
    columns = [
        person,
        _struct(_PERSONAL_EMAIL, [p.email]),
        _all_null(_MOBILE_PHONE, n),
        _struct(_HOME_ADDRESS, [_take(_P_CITY, city), _take(_P_CITY_CC, city), postal]),
        _all_null(_WORK_ADDRESS, n),
        _all_null(_LOYALTY, n),
        _struct(_AUDIT, [_timestamps(updated)]),
        _all_null(SEGMENT_MEMBERSHIP_TYPE, n),
        identity_map,
    ]
    return pa.Table.from_arrays(columns, schema=CRM_SCHEMA)


def _loyalty(ctx: _Context, p: _People) -> pa.Table:
    """The loyalty record of the ~60% of people who have one (~10% of them keyed by an unlinked phone)."""
    rng = _rng(ctx, _STREAM_LOYALTY, p.block)
    n = p.n
    # Draw for everyone, then keep members: a person's values do not depend on who else is a member.
    other_domain = rng.random(n) < 0.15
    domain = np.where(other_domain, _other(rng, p.domain, len(_EMAIL_DOMAINS)), p.domain)
    other_first = rng.random(n) < 0.10
    first = np.where(other_first, _other(rng, p.first, len(_FIRST_NAMES)), p.first)
    has_phone = rng.random(n) < 0.70
    points = np.asarray(_TIER_POINTS, dtype=np.int64)[p.tier] + rng.integers(0, 20_000, n)
    joined = ctx.ref_days - rng.integers(30, 3653, n)
    audited = rng.random(n) < 0.50
    updated = ctx.ref_us - 1 - rng.integers(0, 365 * _US_PER_DAY, n)

    keep = pa.array(np.nonzero(p.has_loyalty)[0].astype(np.int64))
    m = len(keep)
    unlinked = p.unlinked[p.has_loyalty]
    linked = ~unlinked
    sel = p.has_loyalty

    email = p.email.take(keep)
    address = pc.binary_join_element_wise(_local_part(email), "@", _take(_P_DOMAINS, domain[sel]), "")
    own_phone = p.phone.take(keep)
    loose_phone = _prefixed("+447", p.index[sel], ctx.width(9))
    phone_present = np.where(unlinked, True, has_phone[sel])
    phone = pc.if_else(pa.array(unlinked), loose_phone, own_phone)
    phone = _null_where(phone, ~phone_present)

    person = _struct(
        _PERSON,
        [
            _struct(_PERSON[0].type, [_take(_P_FIRST, first[sel]), pa.nulls(m, pa.string())]),
            pa.nulls(m, pa.string()),
            pa.nulls(m, pa.string()),
        ],
    )
    identity_map = _identity_map(
        m,
        [
            _Slot(_NS_EMAIL, email, None, linked, linked, _const(m, _AMBIGUOUS)),
            _Slot(_NS_PHONE, phone, None, phone_present, unlinked, _const(m, _AMBIGUOUS)),
        ],
    )
    columns = [
        person,
        _struct(_PERSONAL_EMAIL, [_null_where(address, unlinked)], unlinked),
        _struct(_MOBILE_PHONE, [phone], ~phone_present),
        _struct(
            _LOYALTY,
            [_take(_P_TIERS, p.tier[sel]), pa.array(points[sel], pa.int64()), _dates(joined[sel])],
        ),
        _struct(_AUDIT, [_timestamps(updated[sel], ~audited[sel])], ~audited[sel]),
        identity_map,
    ]
    return pa.Table.from_arrays(columns, schema=LOYALTY_SCHEMA)


def _local_part(emails: pa.Array) -> pa.Array:
    """The part of each email before the `@`."""
    return pc.extract_regex(emails, r"^(?P<local>[^@]*)@").field("local")


# --------------------------------------------------------------------------------------------------
# Events


def _events(ctx: _Context, p: _People, sub: int, n: int) -> pa.Table:
    """`n` ExperienceEvents of people drawn uniformly from the block."""
    rng = _rng(ctx, _STREAM_EVENTS, p.block, sub)
    who = rng.integers(0, p.n, n)
    ids = _uuid4(rng, n)
    ts = ctx.ref_us - 1 - rng.integers(0, _EVENT_WINDOW_DAYS * _US_PER_DAY, n)
    etype = _choice(rng, _EVENT_TYPE_WEIGHTS, n)
    device = (rng.random(n) * p.ecid_count[who]).astype(np.int64)
    auth = rng.random(n) < 0.30
    by_email = rng.random(n) < 0.30
    logged_out = rng.random(n) < 0.10
    general_page = rng.integers(0, len(_GENERAL_PAGES), n)

    # productListItems: 1 item for views and adds, 1-4 for purchases, none otherwise.
    is_purchase = etype == _PURCHASE
    commerce = (etype == _PRODUCT_VIEW) | (etype == _LIST_ADD) | is_purchase
    item_count = np.where(commerce, 1, 0) + np.where(is_purchase, rng.integers(0, 4, n), 0)
    item_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(item_count, out=item_offsets[1:])
    n_items = int(item_offsets[-1])
    product = rng.integers(0, len(_PRODUCTS), n_items)
    item_event = np.repeat(np.arange(n, dtype=np.int64), item_count)
    quantity = np.where(etype[item_event] == _PRODUCT_VIEW, 1, rng.integers(1, 4, n_items)).astype(np.int64)
    item_price = np.round(_PRODUCT_PRICES[product] * quantity, 2)
    items = _struct(
        _PRODUCT_ITEM,
        [_take(_P_SKUS, product), _take(_P_PRODUCT_NAMES, product), pa.array(quantity), pa.array(item_price)],
    )
    product_list = pa.ListArray.from_arrays(
        pa.array(item_offsets.astype(np.int32)), items, type=pa.list_(_PRODUCT_ITEM), mask=_mask(~commerce)
    )
    order_total = np.round(np.bincount(item_event, weights=item_price, minlength=n), 2)
    order = _struct(
        _COMMERCE[0].type,
        [
            pa.array(order_total, pa.float64(), mask=~is_purchase),
            pc.if_else(pa.array(is_purchase), pa.scalar("USD"), pa.scalar(None, pa.string())),
        ],
    )

    first_product = np.zeros(n, dtype=np.int64)
    first_product[commerce] = product[item_offsets[:-1][commerce]]
    page = np.select(
        [etype == _PRODUCT_VIEW, etype == _LIST_ADD, is_purchase],
        [_PRODUCT_PAGE_BASE + first_product, _CART_PAGE_INDEX, _CONFIRMATION_PAGE_INDEX],
        general_page,
    )
    browser = p.browser[who, device]

    crm_slot = auth & ~by_email
    email_slot = auth & by_email
    person_state = np.where(logged_out, _LOGGED_OUT, _AUTHENTICATED).astype(np.int64)
    identity_map = _identity_map(
        n,
        [
            _Slot(_NS_ECID, p.ecids, device * p.n + who, _flag(n, True), _flag(n, True), _const(n, _AMBIGUOUS)),
            _Slot(_NS_CRMID, p.crmid, who, crm_slot, _flag(n, False), person_state),
            _Slot(_NS_EMAIL, p.email, who, email_slot, _flag(n, False), person_state),
        ],
    )
    columns = [
        ids,
        _timestamps(ts),
        _take(_P_EVENT_TYPES, etype),
        _struct(_WEB, [_struct(_WEB[0].type, [_take(_P_PAGE_NAMES, page), _take(_P_PAGE_URLS, page)])]),
        _struct(
            _ENVIRONMENT,
            [
                _struct(
                    _ENVIRONMENT[0].type,
                    [_take(_P_BROWSER_NAMES, browser), _take(_P_BROWSER_VERSIONS, browser)],
                )
            ],
        ),
        _struct(_COMMERCE, [order], ~is_purchase),
        product_list,
        identity_map,
    ]
    return pa.Table.from_arrays(columns, schema=EVENTS_SCHEMA)
