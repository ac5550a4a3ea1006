"""The ITEm BentoML service: product embeddings (``POST /embed``) and same-product search over the
catalog index packaged with the model (``POST /similar``).

    bentoml serve serving.service:ItemService --port 3000      # or: item serve [--tag item:VERSION]

The model is ``ITEM_MODEL_TAG`` when set (pinned), else the model registry's champion, else
``item:latest`` in the BentoML model store (:func:`resolve_model_tag`). Unless pinned, the service
polls the champion pointer (``ITEM_WATCH_INTERVAL_S``, default 10 s; ``gs://`` registries too) and,
when it moves (a promotion, ``item gate reject``), loads the new champion beside the old one and
swaps them in one assignment (:meth:`ItemService.swap_to`): requests in flight finish on the model
they started on, every response names the version that produced it, ``/readyz`` stays 200. Its store entry holds the Hugging Face model folder and, built at
package time, ``catalog_index/`` (:mod:`components.index.layout`): the embeddings of the catalog the model
was validated on, with ids and titles.

Endpoints (BentoML also serves ``/livez``, ``/readyz``, ``/healthz``, ``/metrics`` (Prometheus) and
the OpenAPI document at ``/docs.json``):

* ``POST /embed`` ``{"listings": [{"title": ..., "image": <base64 JPEG/PNG>}, ...]}`` -> one
  ``{"embedding": [D floats], "kind", "model_version"}`` per listing, in order. A batchable API:
  concurrent requests are batched together by BentoML's adaptive batching. Also accepts
  ``multipart/form-data`` (see :class:`RequestGuard`).
* ``POST /similar`` ``{"listing": {...}}`` or ``{"product_id": "1163"}``, ``"k": 10`` -> the top-k
  catalog listings by cosine similarity over the whole catalog's index of the served version under the
  storage root (``<storage root>/indexes/<version>/``), else the copy of it packaged with the model;
  exact search (a float32 matrix product and ``np.argpartition``) or, for an index built above its
  exact-search threshold, its approximate index (the answer's ``search`` and ``index_source`` say
  which); a ``product_id`` query uses its stored embedding and excludes itself; a title-only or
  photo-only listing is searched against the catalog's embeddings of that kind when the index holds
  them (:func:`serving.service_model.searched_kind`); ``k`` above the index size is clipped, with a ``note``.

Bad input never reaches the model: every listing is validated and its photo decoded before
batching (:mod:`serving.schemas`), and :class:`RequestGuard` enforces content types and the body
size limit; each failure is a 4xx ``{"error": "<field>: <message>", ...}``.

Served embeddings are sampled into the traffic log (:mod:`serving.traffic_log`).
"""

from __future__ import annotations

import os

from components.steps.environment import set_offline_defaults  # noqa: E402

set_offline_defaults()
# OpenMP threads sleep instead of spinning while they wait: the model's threads share the cores with the
# HTTP event loop, and spinning threads starve it (benchmarks/serving.py, c = 16: 81.7 -> 105.0 embeddings/s
# with two threads)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import functools  # noqa: E402
import inspect  # noqa: E402
import logging  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Any, Literal, Optional  # noqa: E402

import bentoml  # noqa: E402
import numpy as np  # noqa: E402
from bentoml.exceptions import InvalidArgument, NotFound  # noqa: E402
from pydantic import Field  # noqa: E402

from serving import schemas, service_guard  # noqa: E402
from serving.schemas import (MAX_K, MAX_LISTINGS, Embedding, Listing, Neighbour, ProductId,  # noqa: E402
                             SimilarResult)
from serving.service_guard import (CURRENT, DECODE_PROCESSES, RequestGuard, decode_pool, tiny_png)
from components.index.filters import MAX_EXCLUDE_IDS, FilterError  # noqa: E402
from components.index.search import DEFAULT_KEYWORD_WEIGHT  # noqa: E402
from serving.service_model import MAX_BATCH_SIZE, MAX_LATENCY_MS, ServedModel, search_ids, searched_kind  # noqa: E402,E501

logger = logging.getLogger("bentoml.item")     # a child of BentoML's logger: its handlers print it

MODEL_NAME = "item"
#: the API key (``ITEM_API_KEY``; unset or empty: no key), carried in the ``API_KEY_HEADER`` header
API_KEY = os.environ.get("ITEM_API_KEY", "")
#: torch intra-op threads of the worker: every core. With OpenMP's passive wait policy (above) the
#: model's threads yield to the HTTP event loop (request parsing, validation, photo decoding, JSON)
#: when it needs a core; one thread fewer than the cores left the model at half speed on 2 cores
#: (docs/serving.md, benchmark).
TORCH_THREADS = int(os.environ.get("ITEM_TORCH_THREADS", "0")) or max(1, os.cpu_count() or 1)


def resolve_model_tag(tag: str | None = None) -> str:
    """The tag of the model to serve, resolved to a concrete version in the local BentoML store.

    :func:`serving.store.production_tag` with ``tag``, else the environment variable
    ``ITEM_MODEL_TAG``: that tag (pinned), else the model registry's champion (the store entry
    packaged from the version the champion pointer names; registry ``$ITEM_REGISTRY`` or
    ``$ITEM_STORAGE_ROOT/registry``), else, when the registry has no champion yet, ``item:latest``
    (the newest model saved as ``item``).

    Returns:
        ``item:<version>``.

    Raises:
        bentoml.exceptions.NotFound: no such model in the store at ``$BENTOML_HOME``, or the
            registry's champion was never packaged (the message says which tag and where it looked).
    """
    from components.registry import RegistryError
    from serving.store import production_tag

    try:       # the one rule for "the model in production" (item serve and item monitor use it too)
        wanted, source = production_tag(tag=tag or os.environ.get("ITEM_MODEL_TAG", "").strip(),
                                        model_name=MODEL_NAME)
    except (LookupError, RegistryError) as exc:
        raise NotFound(str(exc)) from None
    if source == "champion":
        logger.info("serving the registry's champion %s", wanted)
    elif source == "newest":
        logger.info("the registry has no champion yet: serving %s", wanted)
    try:
        return str(bentoml.models.get(wanted).tag)
    except NotFound:
        home = os.environ.get("BENTOML_HOME", "~/bentoml")
        raise NotFound(f"model {wanted!r} is not in the BentoML model store under {home}: package one "
                       f"(item run) or pass --tag / ITEM_MODEL_TAG") from None


MODEL_TAG = resolve_model_tag()
#: a model named at start-up (``ITEM_MODEL_TAG``, ``item serve --tag``) is served as it is; otherwise
#: the service follows the registry's champion pointer, polled every ``ITEM_WATCH_INTERVAL_S`` seconds
#: (0 = never)
PINNED = bool(os.environ.get("ITEM_MODEL_TAG", "").strip())
WATCH_INTERVAL_S = float(os.environ.get("ITEM_WATCH_INTERVAL_S", "10"))
#: the version answering now (the ``X-Item-Model-Version`` header; each response body names the
#: version that produced it, which is authoritative during a swap)
CURRENT["tag"] = MODEL_TAG
#: shadow comparison (serving/shadow.py): a challenger (registry version or ``name:version``) that
#: answers a sample of requests off the users' path, and the share of requests it gets
SHADOW = os.environ.get("ITEM_SHADOW", "").strip()
SHADOW_SAMPLE = float(os.environ.get("ITEM_SHADOW_SAMPLE", "0.2"))

EMBED_BATCH_LISTINGS = bentoml.metrics.Histogram(
    name="item_embed_batch_listings", documentation="listings embedded per model call of /embed",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
EMBED_BATCH_SECONDS = bentoml.metrics.Histogram(
    name="item_embed_batch_seconds", documentation="wall time of one model call of /embed (a batch), seconds",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
TRAFFIC_ROWS = bentoml.metrics.Counter(
    name="item_traffic_log_rows", documentation="embeddings sampled into the traffic log")
LISTING_FAILURES = bentoml.metrics.Counter(
    name="item_embed_listing_failures", documentation="listings whose embedding failed alone (their request got 500)")
SWAPS = bentoml.metrics.Counter(
    name="item_model_swaps", documentation="times the served model was swapped after the champion pointer moved")


@bentoml.service(
    name="item",
    workers=1,   # one process; torch uses the cores inside it
    threads=1,   # /embed batches run one at a time in one thread (and share a lock with /similar)
    traffic={"timeout": 60, "max_concurrency": 256},
    logging={"access": {"enabled": os.environ.get("ITEM_ACCESS_LOG", "1") != "0"}},  # a line per request
)
class ItemService:
    """ITEm product embeddings and same-product search (see the module docstring)."""

    bento_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        import torch

        from serving.traffic_log import TrafficLog, TrafficLogConfig

        torch.set_num_threads(TORCH_THREADS)
        self._model_lock = threading.Lock()
        stored = self.bento_model
        #: the model answering requests now; a request takes it once and uses only it
        self.served: ServedModel = ServedModel.load(str(stored.tag), Path(stored.path))
        schemas.set_image_size(self.served.processor.image_size)     # requests' photos are decoded to it
        CURRENT["tag"] = self.served.tag
        self.traffic = TrafficLog(TrafficLogConfig.from_env(), self.served.tag)
        # start the decoding processes now (each imports numpy and Pillow once), not on the first photo
        h, w = self.served.processor.image_size
        pool = decode_pool()
        for f in [pool.submit(schemas.decode_images, [tiny_png()], (h, w)) for _ in range(DECODE_PROCESSES)]:
            f.result(timeout=120)
        self.shadow = self._start_shadow(SHADOW) if SHADOW else None
        self._stop = threading.Event()
        # the swap counter exists from the start, made in this thread: made first by the watcher thread
        # at its first swap, its value was missing from /metrics in about half the runs (0.0 after a swap)
        SWAPS.inc(0)
        self.watching = WATCH_INTERVAL_S > 0 and not PINNED
        if self.watching:
            threading.Thread(target=self._watch_champion, name="champion-watch", daemon=True).start()
        logger.info("serving %s (D = %d, image %s, %d torch threads), traffic log sample %.3f under %s; %s",
                    self.served.tag, self.served.dim, self.served.processor.image_size, TORCH_THREADS,
                    self.traffic.config.sample_rate, self.traffic.directory,
                    f"watching the registry's champion every {WATCH_INTERVAL_S:g} s" if self.watching
                    else "pinned to this model (ITEM_MODEL_TAG / --tag), not watching the registry")

    # --------------------------------------------------------------------------- shadow
    def _start_shadow(self, wanted: str):
        """Load the challenger ``wanted`` (a registry version, or a ``name:version`` store tag) beside the
        champion and start the shadow comparison (:class:`serving.shadow.Shadow`).

        Raises:
            LookupError: no package of it in the BentoML store.
        """
        from components.storage.layout import find_packaged_model
        from serving.shadow import Shadow
        from serving.store import package_of, registry_version_of

        tag = wanted if ":" in wanted else package_of(wanted, model_name=MODEL_NAME)
        found = find_packaged_model(tag) if tag else None
        if found is None:
            raise LookupError(f"shadow challenger {wanted!r} has no package in the BentoML store "
                              f"(item gate approve packages a version; or pass its name:version tag)")
        challenger = ServedModel.load(*found)
        version = wanted if ":" not in wanted else (registry_version_of(found[0]) or found[0].replace(":", "-"))
        shadow = Shadow(challenger, search_ids, self._embed_shadow, self.traffic.config.storage_root, version,
                        sample=SHADOW_SAMPLE,
                        rows_per_file=int(os.environ.get("ITEM_SHADOW_ROWS_PER_FILE", "200")),
                        flush_seconds=float(os.environ.get("ITEM_SHADOW_FLUSH_SECONDS", "30")))
        logger.info("shadow: %s (registry version %s) answers %.0f %% of requests off the users' path; log %s",
                    challenger.tag, version, 100 * SHADOW_SAMPLE, shadow.log.directory)
        return shadow

    def _embed_shadow(self, served: "ServedModel", listings: list[Listing]) -> np.ndarray:
        with self._model_lock:
            return served.embed([l.title if l.has_title else None for l in listings], [l.pixels for l in listings])

    # --------------------------------------------------------------------------- hot swap
    def _watch_champion(self) -> None:
        """Poll the registry's champion pointer; when it names another packaged model, load that model
        and its catalog index beside the current one, then swap (see :meth:`swap_to`)."""
        from serving.store import champion_tag

        while not self._stop.wait(WATCH_INTERVAL_S):
            try:
                wanted = champion_tag(model_name=MODEL_NAME)
            except Exception as exc:  # an unreadable registry or a champion not packaged: keep serving
                logger.warning("champion watch: %s; still serving %s", exc, self.served.tag)
                continue
            if wanted and wanted != self.served.tag:
                try:
                    self.swap_to(wanted)
                except Exception:
                    logger.exception("champion watch: could not load %s; still serving %s", wanted, self.served.tag)

    def swap_to(self, tag: str) -> None:
        """Load the packaged model ``tag`` (weights, processor, catalog index) and warm it up while the
        current one keeps answering, then make it the served model in one assignment: requests already
        running finish on the model they started with, every later one gets the new model, and each
        response names the version that produced it.

        Raises:
            LookupError: ``tag`` is not in the BentoML store. ValueError: its catalog index is malformed.
        """
        from components.storage.layout import find_packaged_model

        found = find_packaged_model(tag)
        if found is None:
            raise LookupError(f"{tag} is not in the BentoML store")
        t0 = time.perf_counter()
        new = ServedModel.load(*found)
        old, self.served = self.served, new
        CURRENT["tag"] = new.tag
        schemas.set_image_size(new.processor.image_size)
        SWAPS.inc()
        logger.info("now serving %s (was %s; loaded and warmed up in %.1f s)", new.tag, old.tag,
                    time.perf_counter() - t0)

    # ------------------------------------------------------------------------------- model calls
    def _embed(self, served: "ServedModel", listings: list[Listing]) -> tuple[np.ndarray, dict[int, str]]:
        """Validated listings -> ((n, D) float32 L2-normalised embeddings by ``served``, ``{position:
        error}`` of listings that failed); the embedded ones are sampled into the traffic log.

        When the batch's model call fails, each listing is embedded alone, so one failing listing
        fails only itself (and with it only its own request, see :class:`RequestGuard`)."""
        titles = [l.title if l.has_title else None for l in listings]
        pixels = [l.pixels for l in listings]
        failed: dict[int, str] = {}
        with self._model_lock:  # /embed batches and /similar listing queries come from different threads
            try:
                vectors = served.embed(titles, pixels)
            except Exception:
                logger.exception("a batch of %d listings failed; embedding them one by one", len(listings))
                vectors = np.zeros((len(listings), served.dim), dtype=np.float32)
                for i in range(len(listings)):
                    try:
                        vectors[i] = served.embed([titles[i]], [pixels[i]])[0]
                    except Exception as exc:
                        failed[i] = f"{type(exc).__name__}: {exc}"
        ok = [i for i in range(len(listings)) if i not in failed]
        logged = self.traffic.record(vectors[ok], [listings[i].kind for i in ok], [listings[i].has_title for i in ok],
                                     [listings[i].pixels is not None for i in ok],
                                     [len(listings[i].title) if listings[i].has_title else 0 for i in ok],
                                     model_tag=served.tag)
        if logged:
            TRAFFIC_ROWS.inc(logged)
        if failed:
            LISTING_FAILURES.inc(len(failed))
        return vectors, failed

    # -------------------------------------------------------------------------------------- API
    @bentoml.api(route="/embed", batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def embed(self, listings: Annotated[list[Listing], Field(min_length=1, max_length=MAX_LISTINGS)]
              ) -> list[Embedding]:
        """Product embeddings of listings (title and/or base64 JPEG/PNG image), in request order:
        L2-normalised float vectors of the model's width D, with their kind (joint / text / image)
        and the model version. Concurrent requests are batched together (adaptive batching)."""
        served = self.served
        EMBED_BATCH_LISTINGS.observe(len(listings))
        t0 = time.perf_counter()
        vectors, failed = self._embed(served, listings)
        elapsed = time.perf_counter() - t0
        EMBED_BATCH_SECONDS.observe(elapsed)
        if self.shadow is not None and "joint" in served.indexes:
            for i, (v, l) in enumerate(zip(vectors, listings)):
                if i not in failed and self.shadow.sampled():
                    self.shadow.submit(route="/embed", champion=served, query_kind=l.kind, champion_ms=1e3 * elapsed,
                                       champion_vector=v, listing=l)
        return [Embedding(embedding=[], kind=l.kind, model_version=served.tag, error=failed[i]) if i in failed
                else Embedding(embedding=v.tolist(), kind=l.kind, model_version=served.tag)
                for i, (v, l) in enumerate(zip(vectors, listings))]

    @bentoml.api(route="/similar")
    async def similar(self, listing: Optional[Listing] = None, product_id: Optional[ProductId] = None,
                      k: Annotated[int, Field(ge=1, le=MAX_K)] = 10,
                      filters: Optional[dict[str, Any]] = None,
                      exclude_ids: Optional[Annotated[list[str], Field(max_length=MAX_EXCLUDE_IDS)]] = None,
                      mode: Literal["vector", "keyword", "hybrid"] = "vector",
                      keyword_weight: Annotated[float, Field(ge=0.0, le=100.0)] = DEFAULT_KEYWORD_WEIGHT
                      ) -> SimilarResult:
        """The top-k same-product candidates in the catalog index for a listing (title and/or image)
        or a catalog ``product_id`` (its stored embedding; itself excluded), best first, with ids and
        titles. ``mode``: ``vector`` (cosine similarity: the catalog's joint embeddings, or for a
        title-only / photo-only listing those of the same kind), ``keyword`` (BM25 over the titles) or
        ``hybrid`` (both, fused by reciprocal rank fusion, the keyword list weighted ``keyword_weight``,
        default 0.1 as measured in docs/index.md; 0.5-1 for queries whose words matter more, e.g. SKUs).
        ``filters`` (``{column: value | [values] | {"gte": ..}}``, docs/serving.md) and ``exclude_ids``
        restrict the answer to the listings they keep; ``search`` says how the index was searched
        (exactly, through the approximate index, or BM25) and ``matching`` how many listings the
        filters kept."""
        served = self.served
        t0 = time.perf_counter()
        if (listing is None) == (product_id is None):
            raise InvalidArgument("listing, product_id: give exactly one of 'listing' or 'product_id'")
        if "joint" not in served.indexes:
            from bentoml.exceptions import ServiceUnavailable
            raise ServiceUnavailable(f"{served.tag} was packaged without a catalog index")
        row = None
        if product_id is not None:
            row = served.row_of.get(product_id)
            if row is None:
                raise NotFound(f"product_id: {product_id!r} is not in the catalog index of {served.tag} "
                               f"({len(served.ids)} listings)")
        text = served.titles[row] if listing is None else listing.title
        if mode != "vector" and not (text or "").strip():
            raise InvalidArgument(f"{'listing.title' if listing is not None else 'product_id'}: mode {mode!r} "
                                  f"needs a title to search the titles with")
        kind = "catalog" if listing is None else listing.kind
        searched = "joint" if listing is None else searched_kind(served, kind)
        try:                                   # a bad filter is refused before any embedding is computed
            match = served.catalog.filter.match(filters, exclude_ids)
        except FilterError as exc:
            raise InvalidArgument(str(exc)) from None
        search = functools.partial(served.catalog.search, k, mode, text=text, kind=searched, match=match,
                                   exclude_row=row, keyword_weight=keyword_weight)
        if listing is None or mode == "keyword":
            # a few ms of one matrix-vector product: cheaper here than two thread hand-offs
            vector = None if listing is not None else np.asarray(served.indexes["joint"][row], dtype=np.float32)
            hits = search(vector=vector)
        else:
            import anyio

            def embed_and_search():
                vectors, failed = self._embed(served, [listing])
                if failed:
                    raise RuntimeError(f"listing: embedding failed ({failed[0]})")
                return search(vector=vectors[0])
            hits = await anyio.to_thread.run_sync(embed_and_search)
        rows, scores, how = hits.rows, hits.scores, hits.search
        if self.shadow is not None and self.shadow.sampled() and mode == "vector" and match.mask is None:
            self.shadow.submit(route="/similar", champion=served, query_kind=kind,
                               champion_ms=1e3 * (time.perf_counter() - t0),
                               champion_ids=[str(served.ids[r]) for r in rows], listing=listing, product_id=product_id)
        notes = list(hits.notes)
        room = match.matching - (row is not None and (match.mask is None or bool(match.mask[row])))
        if k > room:
            notes.append(f"k={k} clipped to {room}: " + (f"the catalog index holds {len(served.ids)} listings"
                                                          if match.mask is None else
                                                          f"{hits.matching} listings match the filters")
                         + (" (the queried one excluded)" if row is not None else ""))
        elif len(rows) < k and mode == "keyword":
            notes.append(f"{len(rows)} of k={k}: only {len(rows)} matching titles share a word with the query")
        return SimilarResult(
            model_version=served.tag, query_kind=kind, index=searched, product_id=product_id, k=k,
            catalog_size=len(served.ids), search=how, index_source=served.index_source, mode=mode,
            matching=hits.matching, note="; ".join(notes) or None,
            results=[Neighbour(product_id=served.ids[r], title=served.titles[r], category=served.categories[r],
                               score=float(s)) for r, s in zip(rows, scores)])

    @bentoml.on_shutdown
    def _close(self) -> None:
        self._stop.set()
        self.traffic.close()
        if self.shadow is not None:
            self.shadow.close()
        if service_guard._DECODE_POOL is not None:
            service_guard._DECODE_POOL.shutdown(wait=False, cancel_futures=True)


# BentoML decides the media type of a root-model output (/embed returns a JSON array) by rebuilding
# its JSON schema on every response, several ms a request here; it is JSON, so say it once.
ItemService.apis["embed"].output_spec.media_type = "application/json"

ItemService.add_asgi_middleware(
    RequestGuard,
    routes={"/embed": ("application/json", "multipart/form-data"),
            "/similar": ("application/json", "multipart/form-data")},
    max_body_bytes=schemas.MAX_BODY_BYTES,
    api_key=API_KEY,
    # the top-level fields each route takes: its API function's parameters (an unknown one is a 400)
    fields={f"/{name}": frozenset(p for p in inspect.signature(ItemService.apis[name].func).parameters if p != "self")
            for name in ("embed", "similar")})
