"""The ITEm service against a real ``bentoml serve`` on a loopback port, with the real tiny blessed
model of ``packaged_model`` and real catalog listings: /embed round trip, /similar on same-product
groups, adaptive batching observed in the service's metrics, a barrage of bad input, the traffic
log, health/metrics/OpenAPI, ``bentoml build`` of an offline Bento, and the ``item serve`` command."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
from components.steps.environment import OFFLINE_ENV  # noqa: E402

QUIET_ENV = dict(OFFLINE_ENV)


# ----------------------------------------------------------------------------------- helpers
def Server(target: str, env: dict, cwd: Path, log_path: Path, timeout: float = 180.0):
    """``bentoml serve TARGET`` on a free loopback port with exactly ``env`` (serving.serving_check.LocalServer);
    ``.url``, ``.proc``, ``.log()``, ``.stop()``."""
    from serving.serving_check import LocalServer
    return LocalServer(env, log_path, timeout=timeout, target=target, cwd=cwd, inherit=False)


def _env(packaged_model: dict, **extra: str) -> dict:
    env = {**os.environ, **QUIET_ENV, "BENTOML_HOME": packaged_model["bentoml_home"],
           "ITEM_MODEL_TAG": packaged_model["tag"]}
    env.update(extra)
    return env


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _metric(text: str, name: str, labels: str = "") -> float:
    """Sum of a Prometheus sample's values over label sets containing ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, value = line.rsplit(" ", 1)
            if labels in head:
                total += float(value)
    return total


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def server(packaged_model, tmp_path_factory):
    """``bentoml serve serving.service:ItemService`` with every embedding logged, 4 rows a file."""
    tmp = tmp_path_factory.mktemp("serving")
    env = _env(packaged_model, ITEM_STORAGE_ROOT=str(tmp / "storage"), ITEM_TRAFFIC_SAMPLE="1.0",
               ITEM_TRAFFIC_ROWS_PER_FILE="4")
    srv = Server("serving.service:ItemService", env, ROOT, tmp / "server.log")
    srv.storage_root = tmp / "storage"
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def catalog_rows(packaged_model) -> pd.DataFrame:
    """The validated real catalog slice the model was packaged with (titles, photos, groups)."""
    return pd.read_parquet(Path(packaged_model["catalog_dir"]) / "catalog.parquet")


@pytest.fixture(scope="module")
def in_process(packaged_model):
    from item_model.modeling_item import ItemModel
    from item_model.processing_item import ItemProcessor
    model = ItemModel.from_pretrained(packaged_model["model_dir"]).eval()
    return model, ItemProcessor.from_pretrained(packaged_model["model_dir"], model.config)


# ------------------------------------------------------------------------------------- /embed
def test_embed_round_trip_equals_in_process_embedding(server, packaged_model, catalog_rows, in_process):
    import bentoml

    from item_model.image_utils import decode_image
    from item_model.inference import embed_listings

    rows = catalog_rows.iloc[:12]
    listings, titles, images = [], [], []
    model, processor = in_process
    for i, (title, blob) in enumerate(zip(rows["title"], rows["image_bytes"])):
        use_title, use_image = i % 3 != 2, i % 3 != 1          # joint, text only, image only
        listing = {}
        if use_title:
            listing["title"] = title
        if use_image:
            listing["image"] = _b64(blob)
        listings.append(listing)
        titles.append(title if use_title else None)
        images.append(decode_image(blob, processor.image_size) if use_image else None)

    client = bentoml.SyncHTTPClient(server.url, timeout=60)
    try:
        out = client.embed(listings=listings)
    finally:
        client.close()
    served = np.array([o["embedding"] for o in out], dtype=np.float32)
    expected = embed_listings(model, processor, titles, images)
    assert served.shape == expected.shape == (12, model.config.hidden_size)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    assert [o["kind"] for o in out] == ["joint", "text", "image"] * 4
    assert {o["model_version"] for o in out} == {packaged_model["tag"]}

    # the same listing as a multipart upload (file part) and through @references
    one = httpx.post(f"{server.url}/embed", data={"title": rows["title"].iloc[0]},
                     files={"image": ("photo.jpg", rows["image_bytes"].iloc[0], "image/jpeg")}, timeout=60)
    assert one.status_code == 200, one.text
    assert one.headers["x-item-model-version"] == packaged_model["tag"]
    np.testing.assert_allclose(one.json()[0]["embedding"], expected[0], atol=1e-5)
    refs = httpx.post(f"{server.url}/embed", timeout=60,
                      data={"listings": json.dumps([{"image": "@b"}, {"title": rows["title"].iloc[0], "image": "@a"},
                                                    {"image": "@b"}])},
                      files={"a": ("a.jpg", rows["image_bytes"].iloc[0], "image/jpeg"),
                             "b": ("b.jpg", rows["image_bytes"].iloc[2], "image/jpeg")})
    assert refs.status_code == 200, refs.text
    np.testing.assert_allclose([r["embedding"] for r in refs.json()], expected[[2, 0, 2]], atol=1e-5)


def test_concurrent_requests_are_batched_together(server, catalog_rows):
    rows = catalog_rows.iloc[:48]
    bodies = [{"listings": [{"title": t, "image": _b64(b)}]} for t, b in zip(rows["title"], rows["image_bytes"])]
    before = httpx.get(f"{server.url}/metrics", timeout=10).text

    async def fire() -> list[int]:
        limits = httpx.Limits(max_connections=len(bodies))
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            responses = await asyncio.gather(*(client.post("/embed", json=b) for b in bodies))
        return [r.status_code for r in responses]

    assert asyncio.run(fire()) == [200] * len(bodies)
    after = httpx.get(f"{server.url}/metrics", timeout=10).text
    calls = _metric(after, "item_embed_batch_listings_count") - _metric(before, "item_embed_batch_listings_count")
    listings = _metric(after, "item_embed_batch_listings_sum") - _metric(before, "item_embed_batch_listings_sum")
    singles = (_metric(after, "item_embed_batch_listings_bucket", 'le="1.0"')
               - _metric(before, "item_embed_batch_listings_bucket", 'le="1.0"'))
    assert listings == len(bodies)
    assert singles < calls < len(bodies), (calls, singles)   # at least one model call took > 1 request
    # BentoML's own view: requests per dispatched batch
    name, sel = "bentoml_service_adaptive_batch_size", 'method_name="embed"'
    requests = _metric(after, name + "_sum", sel) - _metric(before, name + "_sum", sel)
    batches = _metric(after, name + "_count", sel) - _metric(before, name + "_count", sel)
    assert requests == len(bodies) and batches < requests


# ----------------------------------------------------------------------------------- /similar
def test_similar_finds_same_product_group_members(server, packaged_model, catalog_rows):
    members = catalog_rows[catalog_rows["group_id"].notna()].sort_values(["group_id", "product_id"])
    groups = members.groupby("group_id")["product_id"].apply(set).to_dict()
    queries = members.groupby("group_id").head(1).head(15)
    hits_by_id, hits_by_listing = 0, {"joint": 0, "image": 0}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for row in queries.itertuples():
            others = groups[row.group_id] - {row.product_id}
            r = client.post("/similar", json={"product_id": row.product_id, "k": 10})
            assert r.status_code == 200, r.text
            body = r.json()
            ids = [n["product_id"] for n in body["results"]]
            scores = [n["score"] for n in body["results"]]
            assert len(ids) == 10 and row.product_id not in ids and scores == sorted(scores, reverse=True)
            assert body["model_version"] == packaged_model["tag"] and body["query_kind"] == "catalog"
            assert all(n["title"] for n in body["results"])
            hits_by_id += bool(others & set(ids))

            for listing, kind, index in (({"title": row.title, "image": _b64(row.image_bytes)}, "joint", "joint"),
                                         ({"image": _b64(row.image_bytes)}, "image", "image")):
                r = client.post("/similar", json={"listing": listing, "k": 11})
                assert r.status_code == 200, r.text
                assert (r.json()["query_kind"], r.json()["index"]) == (kind, index)
                ids = [n["product_id"] for n in r.json()["results"] if n["product_id"] != row.product_id][:10]
                hits_by_listing[kind] += bool(others & set(ids))
        r = client.post("/similar", json={"listing": {"title": queries["title"].iloc[0]}})
        assert (r.json()["query_kind"], r.json()["index"], len(r.json()["results"])) == ("text", "text", 10)
        # the same queries as multipart forms: a title field and a photo file, and a product id field
        row = queries.iloc[0]
        as_json = client.post("/similar", json={"listing": {"title": row.title, "image": _b64(row.image_bytes)}, "k": 7})
        form = client.post("/similar", data={"title": row.title, "k": "7"},
                           files={"image": ("photo.jpg", row.image_bytes, "image/jpeg")})
        assert form.status_code == 200, form.text
        assert form.json()["query_kind"] == "joint" and len(form.json()["results"]) == 7
        assert [n["product_id"] for n in form.json()["results"]] == [n["product_id"] for n in as_json.json()["results"]]
        by_id = client.post("/similar", headers={"Content-Type": "multipart/form-data; boundary=x"},
                            content=b"--x\r\nContent-Disposition: form-data; name=\"product_id\"\r\n\r\n"
                                    + row.product_id.encode() + b"\r\n--x\r\nContent-Disposition: form-data; "
                                    b"name=\"k\"\r\n\r\n5\r\n--x--\r\n")
        assert by_id.status_code == 200, by_id.text
        assert by_id.json()["query_kind"] == "catalog" and len(by_id.json()["results"]) == 5
    assert hits_by_id == len(queries)
    assert hits_by_listing["joint"] >= len(queries) - 1 and hits_by_listing["image"] >= len(queries) - 1, hits_by_listing


def test_similar_filters_exclusions_and_keyword_modes(server, packaged_model):
    """Filters, ``exclude_ids`` and ``mode`` through the real server, checked against the packaged index
    itself: every result meets the filter, the order is exact filtered search's, excluded ids never
    come back, a filter that matches nothing or fewer than k listings says so in ``note``, and keyword /
    hybrid search find a listing by its exact title."""
    from components.index.layout import load_catalog_index
    listings, emb, _ = load_catalog_index(packaged_model["index_dir"])
    ids = listings["product_id"].astype(str).tolist()
    category = listings["category"].value_counts().index[1]          # a category, not the largest
    query = next(i for i, c in enumerate(listings["category"]) if c != category)

    def exact(filter_mask, row, k):
        scores = emb["joint"] @ emb["joint"][row]
        scores[~filter_mask] = -np.inf
        scores[row] = -np.inf
        order = [r for r in np.argsort(-scores, kind="stable") if np.isfinite(scores[r])]
        return [ids[r] for r in order[:k]]

    with httpx.Client(base_url=server.url, timeout=60) as client:
        r = client.post("/similar", json={"product_id": ids[query], "k": 5, "filters": {"category": category}})
        assert r.status_code == 200, r.text
        body = r.json()
        in_category = (listings["category"] == category).to_numpy()
        assert (body["search"], body["mode"], body["matching"], body["note"]) == ("exact", "vector", in_category.sum(), None)
        got = [n["product_id"] for n in body["results"]]
        assert all(n["category"] == category for n in body["results"])
        assert got == exact(in_category, query, 5)
        # set and range conditions on two other columns, with the catalog's own values
        years = sorted(listings["year"].dropna().unique())
        cond = {"gender": ["Men", "Unisex"], "year": {"gte": int(years[len(years) // 2])}}
        keep = (listings["gender"].isin(["Men", "Unisex"]) & (listings["year"] >= years[len(years) // 2])).to_numpy(bool)
        r = client.post("/similar", json={"product_id": ids[query], "k": 8, "filters": cond})
        assert r.status_code == 200 and r.json()["matching"] == keep.sum()
        assert [n["product_id"] for n in r.json()["results"]] == exact(keep, query, 8)
        # exclude_ids: the first three answers never come back; the next ones move up
        plain = client.post("/similar", json={"product_id": ids[query], "k": 8}).json()["results"]
        first = [n["product_id"] for n in plain[:3]]
        r = client.post("/similar", json={"product_id": ids[query], "k": 5, "exclude_ids": first + ["no-such-id"]})
        got = r.json()["results"]
        # the next five by score (torch and numpy may order the tiny model's near-ties differently)
        assert not {n["product_id"] for n in got} & set(first)
        np.testing.assert_allclose([n["score"] for n in got], [n["score"] for n in plain[3:8]], atol=1e-5)
        assert "exclude_ids: 1 of 4 id(s) are not in the catalog" in r.json()["note"]
        # a value no listing has: an empty answer that says why, never an unfiltered one
        r = client.post("/similar", json={"product_id": ids[query], "filters": {"colour": "Ultraviolet"}})
        assert r.status_code == 200 and r.json()["results"] == [] and r.json()["matching"] == 0
        assert "filters.colour: no listing has 'Ultraviolet'" in r.json()["note"]
        # k above the matching listings: clipped, and said
        small = listings["category"].value_counts()
        rare = small[small >= 2].index[-1]
        r = client.post("/similar", json={"product_id": ids[query], "k": 50, "filters": {"category": rare}})
        assert len(r.json()["results"]) == small[rare] and f"{small[rare]} listings match the filters" in r.json()["note"]

        # keyword and hybrid: a listing found by its exact title, photo withheld
        title = listings["title"].iloc[query]
        same_title = set(listings["product_id"][listings["title"] == title].astype(str))
        for mode in ("keyword", "hybrid"):
            r = client.post("/similar", json={"listing": {"title": title}, "k": 5, "mode": mode})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["mode"] == mode and body["search"] == ("bm25" if mode == "keyword" else "exact")
            assert body["results"][0]["product_id"] in same_title, (mode, title, body["results"][:2])
            scores = [n["score"] for n in body["results"]]
            assert scores == sorted(scores, reverse=True) and scores[0] > 0
        r = client.post("/similar", json={"product_id": ids[query], "k": 5, "mode": "keyword",
                                          "filters": {"category": category}})
        assert r.status_code == 200 and ids[query] not in [n["product_id"] for n in r.json()["results"]]
        assert all(n["category"] == category for n in r.json()["results"])


# ---------------------------------------------------------------------------------- bad input
def _png(width: int, height: int) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def _error_fields(r: httpx.Response) -> list[str]:
    """The fields an error body names, in order: ``{"error": "<field>: <message>; <field>: ..."}``
    gives each part's ``<field>``; when the body carries pydantic's ``detail``, each entry's ``loc``
    must name the same field at the same position (else the list says so). [] for a body that is not
    the structured error."""
    from serving.schemas import format_loc

    try:
        body = r.json()
        error = body["error"]
    except (ValueError, KeyError, TypeError):
        return []
    if not isinstance(error, str):
        return []
    named = [part.split(": ", 1)[0] if ": " in part else "" for part in error.split("; ")]
    if "detail" in body:
        locs = [format_loc(d.get("loc")) for d in body["detail"]]
        if locs[:len(named)] != named[:len(locs)]:
            return [f"error {named} != detail loc {locs}"]
    return named


def test_bad_input_gets_4xx_naming_the_field_and_the_service_keeps_answering(server, catalog_rows):
    from serving import schemas

    jpeg = catalog_rows["image_bytes"].iloc[0]
    ok = {"title": "Nike Men Blue T20 Indian Cricket Jersey"}
    cases = [  # (what, path, request kwargs, status, the field the error names first: "<field>: <message>")
        ("undecodable image", "/embed", {"json": {"listings": [ok, {"image": _b64(b"not an image")}]}},
         400, "listings[1].image"),
        ("truncated JPEG", "/embed", {"json": {"listings": [{"image": _b64(jpeg[:120])}]}}, 400, "listings[0].image"),
        ("not base64", "/embed", {"json": {"listings": [{"image": "%%%"}]}}, 400, "listings[0].image"),
        ("image too many pixels", "/embed", {"json": {"listings": [{"image": _b64(_png(schemas.MAX_IMAGE_SIDE + 1, 8))}]}},
         400, "listings[0].image"),
        ("image too many bytes", "/embed",
         {"json": {"listings": [{"image": _b64(b"\xff" * (schemas.MAX_IMAGE_BYTES + 10))}]}}, 400, "listings[0].image"),
        ("empty listing", "/embed", {"json": {"listings": [ok, {}]}}, 400, "listings[1]"),
        ("blank title only", "/embed", {"json": {"listings": [{"title": "  "}]}}, 400, "listings[0]"),
        ("no listings", "/embed", {"json": {"listings": []}}, 400, "listings"),
        ("too many listings", "/embed", {"json": {"listings": [ok] * (schemas.MAX_LISTINGS + 1)}}, 400, "listings"),
        ("title over the limit", "/embed", {"json": {"listings": [{"title": "x" * (schemas.MAX_TITLE_CHARS + 1)}]}},
         400, "listings[0].title"),
        ("title not a string", "/embed", {"json": {"listings": [{"title": 7}]}}, 400, "listings[0].title"),
        ("unknown field", "/embed", {"json": {"listings": [{"title": "x", "colour": "red"}]}}, 400,
         "listings[0].colour"),
        ("missing body", "/embed", {"content": b"", "headers": {"content-type": "application/json"}}, 400, "listings"),
        ("malformed JSON", "/embed", {"content": b'{"listings": [', "headers": {"content-type": "application/json"}},
         400, "body"),
        ("text/plain", "/embed", {"content": json.dumps({"listings": [ok]}), "headers": {"content-type": "text/plain"}},
         415, "Content-Type"),
        ("no content type", "/embed", {"content": json.dumps({"listings": [ok]}).encode()}, 415, "Content-Type"),
        ("url-encoded form", "/embed", {"data": {"title": "x"}}, 415, "Content-Type"),
        ("pickle", "/embed", {"content": b"\x80\x04N.", "headers": {"content-type": "application/vnd.bentoml+pickle"}},
         415, "Content-Type"),
        ("body over the limit", "/embed", {"content": b" " * (schemas.MAX_BODY_BYTES + 1),
                                           "headers": {"content-type": "application/json"}}, 413, "body"),
        ("streamed body over the limit", "/embed",
         {"content": (b" " * 65536 for _ in range(schemas.MAX_BODY_BYTES // 65536 + 2)),
          "headers": {"content-type": "application/json"}}, 413, "body"),
        ("multipart: junk file", "/embed", {"files": {"image": ("x.jpg", b"\xff\xd8junk", "image/jpeg")}}, 400,
         "listings[0].image"),
        ("multipart: missing file part", "/embed", {"data": {"listings": json.dumps([{"image": "@nope"}])},
                                                   "files": {"a": ("a.jpg", jpeg, "image/jpeg")}}, 400,
         "listings[0].image"),
        ("multipart: unexpected field", "/embed", {"files": {"photo": ("x.jpg", jpeg, "image/jpeg")}}, 400, "photo"),
        # a top-level field the route does not take is named, never answered as if it filtered (issue 33)
        ("unknown top-level field", "/similar", {"json": {"product_id": "1163", "k": 3,
                                                          "filter": {"category": "Tshirts"}}}, 400, "filter"),
        # filters (issue 33): a bad one is named down to the column, the operator or the element
        ("unknown filter column", "/similar", {"json": {"product_id": "1163", "filters": {"brand": "Nike"}}}, 400,
         "filters.brand"),
        ("filter value of the wrong type", "/similar", {"json": {"product_id": "1163", "filters": {"year": "2012"}}},
         400, "filters.year"),
        ("unknown filter operator", "/similar", {"json": {"product_id": "1163", "filters": {"year": {"near": 2012}}}},
         400, "filters.year.near"),
        ("empty filter set", "/similar", {"json": {"product_id": "1163", "filters": {"gender": []}}}, 400,
         "filters.gender"),
        ("filters not an object", "/similar", {"json": {"product_id": "1163", "filters": ["Tshirts"]}}, 400, "filters"),
        ("exclude_ids not strings", "/similar", {"json": {"product_id": "1163", "exclude_ids": [1163]}}, 400,
         "exclude_ids[0]"),
        ("unknown mode", "/similar", {"json": {"product_id": "1163", "mode": "semantic"}}, 400, "mode"),
        ("keyword mode without a title", "/similar", {"json": {"listing": {"image": _b64(jpeg)}, "mode": "keyword"}},
         400, "listing.title"),
        ("negative keyword weight", "/similar", {"json": {"product_id": "1163", "mode": "hybrid", "keyword_weight": -1}},
         400, "keyword_weight"),
        ("unknown top-level field on /embed", "/embed", {"json": {"listings": [ok], "normalize": False}}, 400,
         "normalize"),
        ("k = 0", "/similar", {"json": {"product_id": "1163", "k": 0}}, 400, "k"),
        ("k over the limit", "/similar", {"json": {"product_id": "1163", "k": schemas.MAX_K + 1}}, 400, "k"),
        ("k not a number", "/similar", {"json": {"product_id": "1163", "k": "ten"}}, 400, "k"),
        ("unknown product_id", "/similar", {"json": {"product_id": "no-such-id"}}, 404, "product_id"),
        ("neither listing nor product_id", "/similar", {"json": {"k": 5}}, 400, "listing, product_id"),
        ("both listing and product_id", "/similar", {"json": {"product_id": "1163", "listing": ok}}, 400,
         "listing, product_id"),
        ("empty listing query", "/similar", {"json": {"listing": {}}}, 400, "listing"),
        ("undecodable listing image", "/similar", {"json": {"listing": {"image": _b64(b"GIF89a")}}}, 400,
         "listing.image"),
        ("similar: text/plain", "/similar", {"content": b"{}", "headers": {"content-type": "text/plain"}}, 415,
         "Content-Type"),
    ]
    failures = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for what, path, kwargs, status, field in cases:
            r = client.post(path, **kwargs)
            named = _error_fields(r)
            if r.status_code != status or named[:1] != [field]:
                failures.append(f"{what}: {r.status_code}, names {named}, wanted {field!r} first: {r.text[:300]}")
        assert not failures, "\n".join(failures)

        # still alive, same worker, still right
        assert server.proc.poll() is None
        assert client.get("/readyz").status_code == 200
        r = client.post("/embed", json={"listings": [ok, {"image": _b64(jpeg)}]})
        assert r.status_code == 200 and len(r.json()) == 2
        assert client.post("/similar", json={"product_id": catalog_rows["product_id"].iloc[0]}).status_code == 200
    assert server.log().count("Service item initialized") == 1   # no worker restarted


# ----------------------------------------------------------------------- health, metrics, docs
def test_health_metrics_and_openapi(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for path in ("/livez", "/readyz", "/healthz"):
            assert client.get(path).status_code == 200, path
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert "item_embed_batch_listings_count" in metrics.text
        assert "bentoml_service_request_total" in metrics.text
        spec = client.get("/docs.json").json()
    assert {"/embed", "/similar"} <= set(spec["paths"])
    listing = spec["components"]["schemas"]["Listing"]
    assert {"title", "image"} <= set(listing["properties"])


#: polls /readyz every 50 ms until its stdin closes, then prints the latencies (s; inf = not 200) as
#: JSON; a process of its own, so that the test's own work (building 4 MB bodies) cannot delay it
READYZ_POLLER = """
import json, sys, threading, time, httpx
stop, out = threading.Event(), []
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
with httpx.Client(timeout=5) as client:
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            ok = client.get(sys.argv[1] + "/readyz").status_code == 200
        except httpx.HTTPError:
            ok = False
        out.append(time.perf_counter() - t0 if ok else float("inf"))
        time.sleep(0.05)
print(json.dumps(out))
"""


def test_pixel_budgets_refuse_bombs_from_the_header_while_health_checks_answer(server, catalog_rows):
    """4 concurrent requests of 64 x 4096 x 4096 PNGs (tiny files, 16.8 megapixels each): 400 naming
    the first photo, from its header; 64 x 1500 x 1500 PNGs (under the per-photo budget, 144
    megapixels together): 413 naming ``listings``; 12 x 2000 x 2000 PNGs (48 megapixels, within both
    budgets) are decoded off the event loop and embedded. /readyz is polled all along."""
    bomb, big, ok = _png(4096, 4096), _png(1500, 1500), _png(2000, 2000)
    poller = subprocess.Popen([sys.executable, "-c", READYZ_POLLER, server.url], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    try:
        def post(listings):
            return httpx.post(f"{server.url}/embed", json={"listings": listings}, timeout=120)
        with ThreadPoolExecutor(6) as pool:
            bombs = [pool.submit(post, [{"title": "x", "image": _b64(bomb)}] * 64) for _ in range(4)]
            too_many = pool.submit(post, [{"image": _b64(big)}] * 64)
            fine = pool.submit(post, [{"title": f"listing {i}", "image": _b64(ok)} for i in range(12)])
            bombs = [f.result() for f in bombs]
            too_many, fine = too_many.result(), fine.result()
    finally:
        latencies = json.loads(poller.communicate("", timeout=60)[0])
    for r in bombs:
        assert r.status_code == 400, r.text
        assert r.json()["error"].startswith("listings[0].image: image of 4096 x 4096 px = 16.8 megapixels exceeds")
    assert too_many.status_code == 413 and too_many.json()["error"].startswith("listings: the photos of this "
                                                                              "request hold 144.0 megapixels")
    assert fine.status_code == 200 and len(fine.json()) == 12 and fine.json()[0]["kind"] == "joint"
    # every poll answered 200; the event loop never stalled for long (before: 53 of 67 polls timed out at 1 s)
    assert len(latencies) >= 5 and max(latencies) < 2.0 and sorted(latencies)[len(latencies) // 2] < 0.1, latencies
    print(f"/readyz during the burst: {len(latencies)} polls, p50 {1e3 * sorted(latencies)[len(latencies) // 2]:.1f} "
          f"ms, max {1e3 * max(latencies):.1f} ms")


def test_one_failing_listing_fails_only_its_own_request_in_a_batch(packaged_model, tmp_path):
    """Fault injected (ITEM_FAULT_TITLE: a listing with that title makes the model call raise): sent
    at the same time as 15 good requests, batched with some of them, the poisoned request alone gets
    500 naming the listing; every other request of the batch gets its embeddings."""
    env = _env(packaged_model, ITEM_STORAGE_ROOT=str(tmp_path / "storage"), ITEM_FAULT_TITLE="poison pill",
               ITEM_MAX_LATENCY_MS="20000")
    srv = Server("serving.service:ItemService", env, ROOT, tmp_path / "server.log")
    import re
    try:
        shared = []
        for burst in range(12):            # until the poisoned request has shared a batch with others
            bodies = [[{"title": f"Lucera Women Silver Earrings {burst} {i}"}] for i in range(15)]
            bodies.insert(7, [{"title": "Nike Men Running Shoes"}, {"title": "poison pill"}, {"title": "Puma Cap"}])
            start = threading.Barrier(len(bodies))         # all 16 requests leave at once, so they can share a batch

            def post(body, start=start):
                start.wait(timeout=60)
                return httpx.post(f"{srv.url}/embed", json={"listings": body}, timeout=120)

            with ThreadPoolExecutor(len(bodies)) as pool:
                answers = list(pool.map(post, bodies))
            poisoned = answers.pop(7)
            assert poisoned.status_code == 500
            assert poisoned.json()["error"] == ("listings[1]: embedding failed (RuntimeError: injected fault "
                                                "(ITEM_FAULT_TITLE))")
            assert [r.status_code for r in answers] == [200] * 15
            assert all(len(r.json()[0]["embedding"]) == 384 and r.json()[0]["error"] is None for r in answers)
            sizes = [int(n) for n in re.findall(r"a batch of (\d+) listings failed", srv.log())]
            assert len(sizes) == burst + 1
            shared = [n for n in sizes if n > 3]
            if shared:
                break
        metrics = httpx.get(f"{srv.url}/metrics", timeout=30).text
        after = httpx.post(f"{srv.url}/embed", json={"listings": [{"title": "still serving"}]}, timeout=60)
    finally:
        srv.stop()
    assert shared, sizes                                  # the poisoned request shared its batch with others
    assert _metric(metrics, "item_embed_listing_failures_total") == burst + 1
    assert after.status_code == 200


# -------------------------------------------------------------------------------- traffic log
def test_traffic_log_holds_served_embeddings(server, packaged_model, catalog_rows):
    from components.storage.layout import TRAFFIC_SCHEMA as SCHEMA, read_traffic_log, traffic_files

    rows = catalog_rows.iloc[20:28]
    listings = [{"title": t, "image": _b64(b)} if i % 2 else {"title": t} for i, (t, b)
                in enumerate(zip(rows["title"], rows["image_bytes"]))]
    r = httpx.post(f"{server.url}/embed", json={"listings": listings}, timeout=60)
    assert r.status_code == 200
    served = np.array([o["embedding"] for o in r.json()], dtype=np.float32)
    files = traffic_files(server.storage_root)
    assert files and not list(Path(server.storage_root).rglob("*.tmp"))
    log = read_traffic_log(server.storage_root)
    assert list(log.columns) == SCHEMA.names
    assert set(log["model_tag"]) == {packaged_model["tag"]} and set(log["kind"]) <= {"joint", "text", "image"}
    assert (log["timestamp"] > pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=30)).all()
    logged = np.stack(log["embedding"].to_numpy())
    assert logged.dtype == np.float32 and logged.shape[1] == served.shape[1]
    # with 4 rows a file, at least 4 of the 8 just served are already on disk, with their attributes
    found = 0
    for j, v in enumerate(served):
        match = np.flatnonzero(np.all(np.abs(logged - v) < 1e-6, axis=1))
        if len(match):
            row = log.iloc[match[-1]]
            found += 1
            assert row["has_title"] and row["title_length"] == len(rows["title"].iloc[j])
            assert row["has_image"] == bool(j % 2) and row["kind"] == ("joint" if j % 2 else "text")
    assert found >= 4


@pytest.mark.e2e
def test_item_monitor_reads_the_traffic_log_a_real_server_wrote(server, packaged_model, catalog_rows, tmp_path):
    """Listings embedded by the real server land in its traffic log; `item monitor` (the monitoring
    pipeline through kfp.local) tests that log window against the served model's reference."""
    since = pd.Timestamp.now(tz="UTC").isoformat()
    rows = catalog_rows.iloc[40:104]                                  # 64 joint listings
    for start in range(0, len(rows), 16):
        part = rows.iloc[start:start + 16]
        r = httpx.post(f"{server.url}/embed", timeout=120, json={"listings": [
            {"title": t, "image": _b64(b)} for t, b in zip(part["title"], part["image_bytes"])]})
        assert r.status_code == 200, r.text
    from components.storage.layout import read_traffic_log
    log = read_traffic_log(server.storage_root)
    on_disk = int((log["timestamp"] >= pd.Timestamp(since)).sum())   # 4 rows a file: up to 3 still buffered
    assert 61 <= on_disk <= 64
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli.monitor", "--current", str(server.storage_root / "traffic"),
         "--since", since, "--model-tag", packaged_model["tag"], "--bentoml-home", packaged_model["bentoml_home"],
         "--storage-root", str(tmp_path / "storage"), "--output-dir", str(tmp_path / "runs"),
         "--drift-set", "min_window=20", "--drift-set", "n_splits=20"],
        capture_output=True, text=True, timeout=900, cwd=ROOT, env=_env(packaged_model))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"item monitor: traffic {server.storage_root / 'traffic'}" in proc.stdout
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert {"embed-current", "drift-report"} <= set(summary["tasks_run"])
    drift = summary["drift"]
    assert drift["model_tag"] == packaged_model["tag"] and drift["current"]["source_type"] == "traffic"
    assert drift["current"]["n_rows"] == on_disk and drift["current"]["since"] == since   # what the server logged
    assert drift["modalities"]["joint"]["n_current"] == 50          # tested at the largest window-grid size <= 64


def test_traffic_log_rotates_by_rows_and_hour_and_samples(tmp_path):
    from components.storage.layout import read_traffic_log, traffic_files
    from serving.traffic_log import TrafficLog, TrafficLogConfig

    now = [datetime(2026, 5, 1, 9, 59, 30, tzinfo=timezone.utc)]
    log = TrafficLog(TrafficLogConfig(str(tmp_path), sample_rate=1.0, rows_per_file=5), "item:v1", seed=0,
                     clock=lambda: now[0])
    emb = np.eye(4, 8, dtype=np.float32)
    meta = (["joint", "text", "image", "joint"], [True, True, False, True], [True, False, True, True], [5, 6, 0, 7])
    assert log.record(emb, *meta) == 4
    assert log.record(emb, *meta) == 4            # 8 rows: one full file of 5, 3 buffered
    assert len(traffic_files(tmp_path)) == 1
    now[0] += timedelta(minutes=1)                # next hour: the buffered rows go to their own file
    log.record(emb[:1], *(m[:1] for m in meta))
    assert len(traffic_files(tmp_path)) == 2
    log.close()
    files = traffic_files(tmp_path)
    assert len(files) == 3 and files[0].parent.name == "2026-05-01"
    df = read_traffic_log(tmp_path)
    assert len(df) == 9 and df["timestamp"].dt.hour.tolist() == [9] * 8 + [10]
    np.testing.assert_array_equal(df["embedding"].iloc[1], emb[1])
    assert not any("image" == c or "title" == c for c in df.columns)

    off = TrafficLog(TrafficLogConfig(str(tmp_path / "off"), sample_rate=0.0), "item:v1")
    assert off.record(emb, *meta) == 0 and off.flush() is None
    some = TrafficLog(TrafficLogConfig(str(tmp_path / "some"), sample_rate=0.25), "item:v1", seed=1)
    many = np.zeros((4000, 8), dtype=np.float32)
    kept = some.record(many, ["text"] * 4000, [True] * 4000, [False] * 4000, [3] * 4000)
    assert 850 < kept < 1150
    with pytest.raises(ValueError, match="ITEM_TRAFFIC_SAMPLE"):
        os.environ["ITEM_TRAFFIC_SAMPLE"] = "lots"
        try:
            TrafficLogConfig.from_env()
        finally:
            del os.environ["ITEM_TRAFFIC_SAMPLE"]


# ----------------------------------------------------------------------------- bentoml build
def test_bentoml_build_makes_a_self_contained_bento_that_serves_offline(packaged_model, tmp_path):
    """Build with every package index out of reach, export, import into an empty store, serve it."""
    offline = {"PIP_NO_INDEX": "1", "UV_OFFLINE": "1", "HTTP_PROXY": "http://127.0.0.1:9",
               "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1,localhost"}
    env = _env(packaged_model, **offline)
    bentoml_cli = [sys.executable, "-m", "bentoml"]
    build = subprocess.run([*bentoml_cli, "build", "-f", "serving/bentofile.yaml", "--output", "tag", "."],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    bento_tag = build.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = bento_tag.split(":")
    bento_dir = Path(packaged_model["bentoml_home"]) / "bentos" / name / version
    info = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    assert [m["tag"] for s in info["services"] for m in s["models"]] == [packaged_model["tag"]]
    assert not (bento_dir / "env" / "python" / "requirements.lock.txt").exists()   # nothing was locked
    requirements = (bento_dir / "env" / "python" / "requirements.txt").read_text()
    assert "bentoml==1.4.39" in requirements and "great" not in requirements and "kfp" not in requirements
    for module in ("serving/service.py", "serving/shadow.py", "item_model/modeling_item.py",
                   "components/storage/layout.py", "components/index/layout.py", "components/storage/__init__.py"):
        assert (bento_dir / "src" / module).is_file(), module          # everything the service imports
    size_mb = sum(p.stat().st_size for p in bento_dir.rglob("*") if p.is_file()) / 1e6
    print(f"Bento {bento_tag}: {size_mb:.1f} MB (model, catalog index, source)")

    archive = tmp_path / "item.bento.tar"
    run = subprocess.run([*bentoml_cli, "export", bento_tag, str(archive)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    fresh = {**env, "BENTOML_HOME": str(tmp_path / "fresh-store")}
    fresh.pop("ITEM_MODEL_TAG")                          # the Bento's own model is the latest there
    run = subprocess.run([*bentoml_cli, "import", str(archive)], env=fresh, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    model_name, model_version = packaged_model["tag"].split(":")
    stored = tmp_path / "fresh-store" / "models" / model_name / model_version
    assert (stored / "model.safetensors").is_file() and (stored / "catalog_index" / "embeddings.npz").is_file()

    t0 = time.perf_counter()
    srv = Server(bento_tag, {**fresh, "ITEM_STORAGE_ROOT": str(tmp_path / "storage")}, tmp_path,
                 tmp_path / "bento-server.log")
    print(f"cold start of the imported Bento: {time.perf_counter() - t0:.1f} s to /readyz 200")
    try:
        r = httpx.post(f"{srv.url}/embed", json={"listings": [{"title": "Puma Men Black Sports Shoes"}]}, timeout=60)
        assert r.status_code == 200 and r.json()[0]["model_version"] == packaged_model["tag"]
        first = pd.read_parquet(stored / "catalog_index" / "listings.parquet")["product_id"].iloc[0]
        r = httpx.post(f"{srv.url}/similar", json={"product_id": first, "k": 3}, timeout=60)
        assert r.status_code == 200 and len(r.json()["results"]) == 3
    finally:
        srv.stop()


# -------------------------------------------------------------------------------- item serve
def test_item_serve_command_checks_the_model_before_starting(packaged_model, tmp_path):
    from click.testing import CliRunner

    from pipelines.cli.serve import model_on_disk, serve, serve_command

    home = packaged_model["bentoml_home"]
    assert model_on_disk(home, None) == packaged_model["tag"]
    assert model_on_disk(home, packaged_model["tag"]) == packaged_model["tag"]
    assert model_on_disk(home, "item:nope") is None and model_on_disk(str(tmp_path), None) is None
    cmd = serve_command("127.0.0.1", 3999)
    assert cmd[1:5] == ["-m", "bentoml", "serve", "serving.service:ItemService"] and "3999" in cmd

    result = CliRunner().invoke(serve, ["--bentoml-home", str(tmp_path / "empty"), "--port", "3999"])
    assert result.exit_code == 1 and "no model item:latest in the BentoML store" in result.output
    result = CliRunner().invoke(serve, ["--bentoml-home", home, "--tag", "item:nope", "--traffic-sample", "2"])
    assert result.exit_code == 2 and "traffic-sample" in result.output


def test_api_key_guards_the_api_but_not_the_health_routes(packaged_model, tmp_path, catalog_rows):
    """With ``ITEM_API_KEY`` set, a real server answers 401 naming the header on /embed, /similar and
    /metrics without the key (or with a wrong one), serves them with it, and keeps /readyz open."""
    key = "s3cret-key-for-tests"
    env = _env(packaged_model, ITEM_STORAGE_ROOT=str(tmp_path / "storage"), ITEM_API_KEY=key)
    srv = Server("serving.service:ItemService", env, ROOT, tmp_path / "server.log")
    try:
        body = {"listings": [{"title": catalog_rows["title"].iloc[0]}]}
        for headers in ({}, {"X-API-Key": "wrong"}):
            for method, path, payload in (("POST", "/embed", body), ("POST", "/similar", {"product_id": "x"}),
                                          ("GET", "/metrics", None)):
                r = httpx.request(method, srv.url + path, json=payload, headers=headers, timeout=30)
                assert r.status_code == 401 and "X-API-Key" in r.json()["error"], (path, headers, r.text)
        ok = httpx.post(srv.url + "/embed", json=body, headers={"X-API-Key": key}, timeout=60)
        assert ok.status_code == 200 and len(ok.json()[0]["embedding"]) > 0
        assert httpx.get(srv.url + "/metrics", headers={"X-API-Key": key}, timeout=30).status_code == 200
        assert httpx.get(srv.url + "/readyz", timeout=5).status_code == 200          # probes need no key
    finally:
        srv.stop()
