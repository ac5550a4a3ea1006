"""Serving benchmark: /embed throughput and latency over HTTP beside in-process batched throughput,
and /similar latency over a catalog index the size of the full catalog (44,441 listings).

    .venv/bin/python benchmarks/serving.py                    # full-size ITEm (6 layers), ~4 minutes
    .venv/bin/python benchmarks/serving.py --model tiny       # the test fixture's 2-layer model
    .venv/bin/python benchmarks/serving.py --bentoml-home ~/bentoml --tag item:VERSION   # a packaged model

What is measured, in one run on this machine:

* in-process: photos decoded (``item_model.image_utils.decode_image``) and embedded with
  ``embed_listings`` in batches of 8, 16 and ``--batch-size`` (the service's max batch) with 1 and
  all torch threads, best of 3 passes each; the baseline is the best of all of them, measured
  before the server starts and again after it stops (the machine is shared: take the best);
* HTTP: a real ``bentoml serve serving.service:ItemService`` on a loopback port, driven by an
  asyncio ``httpx`` client in this process at each concurrency level; every request is one real
  catalog listing (title + base64 JPEG) unless ``--listings-per-request`` says otherwise, so the
  batching is the server's; each worker waits for its answer before sending the next (closed
  loop); embeddings/s = listings answered / wall time, latency per request. The load generator
  (aiohttp) runs on the same cores as the server;
* /similar: sequential requests by ``product_id`` (stored embedding, exact search) and by listing
  (embed + exact search), p50/p99; and the exact search alone in-process.
* CPU seconds per embedding, fair on a shared machine (the load generator and the server share the
  cores, so embeddings/s alone cannot separate the service's cost from the client's): the CPU time
  (user + system, psutil) of the server's whole process tree (``bentoml serve``, its worker, the
  photo-decoding processes) during each concurrency level, divided by the embeddings answered;
  beside it, the CPU time (``time.process_time``, all threads) of this process decoding and
  embedding the same listings in-process in batches of the size the server formed at that level.
  Their ratio is the service's overhead (HTTP, JSON, validation, batching).

The model is copied into a temporary BentoML store together with a 44,441-row catalog index whose
ids, titles and categories are the real catalog's and whose vectors are random unit vectors
(seeded): search cost depends only on the index shape (n x D float32), and embedding the whole
catalog with the model would take longer than the benchmark. ``--model full`` (default) is an
untrained ITEm of the default profile's architecture (``pipelines/configs/profiles.yaml``:
MiniLM-initialised, 6 layers, D = 384, 40 x 32 photos in 8 px patches), which costs exactly what a
trained one does.

Prints a Markdown table; ``--json PATH`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from components.steps.environment import set_offline_defaults  # noqa: E402

set_offline_defaults()

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
DEFAULT_CATALOG = ROOT.parent / "shared" / "datasets" / "fashion-product-images-small"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100, linear interpolation) of ``values``."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def read_catalog_columns(catalog: Path) -> pd.DataFrame:
    """Ids, titles and leaf categories of every listing in the catalog shards (no images)."""
    parts = [pq.read_table(p, columns=["id", "productDisplayName", "articleType"]).to_pandas()
             for p in sorted((catalog / "data").glob("*.parquet"))]
    df = pd.concat(parts, ignore_index=True)
    return pd.DataFrame({"product_id": df["id"].astype(str), "title": df["productDisplayName"],
                         "category": df["articleType"], "split": "validation"})


def read_query_listings(catalog: Path, n: int) -> pd.DataFrame:
    """The first ``n`` listings of shard 0 with a title and a photo: ``title``, ``image_bytes``."""
    from components.catalog import shard_paths, to_canonical
    df = to_canonical(pq.read_table(shard_paths(catalog)[0]).slice(0, 2 * n), "shard 0")
    df = df[df["title"].notna() & df["image_bytes"].notna()].head(n)
    return df[["product_id", "title", "image_bytes"]].reset_index(drop=True)


def build_model_folder(kind: str, out: Path, bentoml_home: str | None, tag: str | None) -> str:
    """Write the model folder to benchmark into ``out``; return a description of it."""
    if tag:  # read the store on disk: bentoml itself is imported later, for the benchmark's own store
        home = Path(bentoml_home or os.environ.get("BENTOML_HOME") or "~/bentoml").expanduser()
        name, _, version = tag.partition(":")
        if version in ("", "latest"):
            version = (home / "models" / name / "latest").read_text().strip()
        src = home / "models" / name / version
        if not (src / "config.json").is_file():
            raise FileNotFoundError(f"no model {name}:{version} under {home / 'models'}")
        shutil.copytree(src, out, ignore=shutil.ignore_patterns("catalog_index", "model.yaml"))
        return f"{name}:{version} from {home}"
    import torch
    from transformers import AutoTokenizer

    from item_model.modeling_item import ItemModel
    from item_model.processing_item import ItemProcessor, default_bert_path
    from pipelines.config import load_profile
    torch.manual_seed(0)
    overrides = dict(load_profile("default")["model_config"])  # the served architecture
    if kind == "tiny":
        overrides["num_hidden_layers"] = 2
    model = ItemModel.from_bert(default_bert_path(), **overrides)
    model.save_pretrained(out)
    ItemProcessor(AutoTokenizer.from_pretrained(default_bert_path()), model.config).save_pretrained(out)
    c = model.config
    return (f"untrained ITEm, {c.num_hidden_layers} layers, D = {c.hidden_size}, "
            f"{c.image_height} x {c.image_width} px in {c.patch_size} px patches ({kind})")


def package(model_dir: Path, index_df: pd.DataFrame, dim: int, home: Path) -> str:
    """Save the model folder plus a random-vector catalog index into a fresh BentoML store at ``home``."""
    from components.index.layout import save_catalog_index
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(index_df), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    save_catalog_index(model_dir / "catalog_index", index_df, {"joint": vectors}, "benchmark-random-vectors")
    os.environ["BENTOML_HOME"] = str(home)
    import bentoml
    with bentoml.models.create(name="item", labels={"benchmark": "true"}) as bento_model:
        shutil.copytree(model_dir, bento_model.path, dirs_exist_ok=True)
    return str(bento_model.tag)


def in_process_throughput(model_dir: Path, queries: pd.DataFrame, batch_size: int, threads: list[int],
                          passes: int = 3) -> dict:
    """Decode + embed every query listing in batches, for each torch thread count; the best
    embeddings/s over ``passes`` passes and thread counts is the baseline."""
    import torch

    from item_model.image_utils import decode_image
    from item_model.inference import embed_listings
    from item_model.modeling_item import ItemModel
    from item_model.processing_item import ItemProcessor
    model = ItemModel.from_pretrained(str(model_dir)).eval()
    processor = ItemProcessor.from_pretrained(str(model_dir), model.config)
    titles, blobs = queries["title"].tolist(), queries["image_bytes"].tolist()
    by_threads = {}
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        embed_listings(model, processor, titles[:batch_size],
                       [decode_image(b, processor.image_size) for b in blobs[:batch_size]], batch_size)  # warm-up
        rates = []
        for _ in range(passes):
            t0 = time.perf_counter()
            for s in range(0, len(titles), batch_size):
                images = [decode_image(b, processor.image_size) for b in blobs[s:s + batch_size]]
                embed_listings(model, processor, titles[s:s + batch_size], images, batch_size)
            rates.append(len(titles) / (time.perf_counter() - t0))
        by_threads[n_threads] = max(rates)
    best = max(by_threads, key=by_threads.get)
    torch.set_num_threads(best)
    by_batch = {batch_size: by_threads[best]}  # also the smaller batches the server forms
    for small in (8, 16):
        rates = []
        for _ in range(passes):
            t0 = time.perf_counter()
            for s in range(0, len(titles), small):
                images = [decode_image(b, processor.image_size) for b in blobs[s:s + small]]
                embed_listings(model, processor, titles[s:s + small], images, small)
            rates.append(len(titles) / (time.perf_counter() - t0))
        by_batch[small] = max(rates)
    return {"embeddings_per_s": max(by_batch.values()), "threads": best, "by_threads": by_threads,
            "by_batch": dict(sorted(by_batch.items())), "batch_size": batch_size, "n": len(titles)}


def server_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and all its live descendants."""
    import psutil
    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def in_process_cpu_per_embedding(model_dir: Path, queries: pd.DataFrame, batch: int, threads: int) -> float:
    """CPU seconds (this process, all threads) per listing to decode and embed ``queries`` in batches of
    ``batch``, in-process, after a warm-up pass."""
    import torch

    from item_model.inference import embed_listings
    from item_model.image_utils import decode_image
    from item_model.modeling_item import ItemModel
    from item_model.processing_item import ItemProcessor
    torch.set_num_threads(threads)
    model = ItemModel.from_pretrained(str(model_dir)).eval()
    processor = ItemProcessor.from_pretrained(str(model_dir), model.config)
    titles, blobs = queries["title"].tolist(), queries["image_bytes"].tolist()

    def one_pass() -> None:
        for s in range(0, len(titles), batch):
            images = [decode_image(b, processor.image_size) for b in blobs[s:s + batch]]
            embed_listings(model, processor, titles[s:s + batch], images, batch)

    one_pass()
    t0 = time.process_time()
    one_pass()
    return (time.process_time() - t0) / len(titles)


def search_latency(index_rows: int, dim: int, threads: int, reps: int = 200) -> dict:
    """In-process exact search (:func:`components.index.search.top_k`, k = 10) over a random (n, D) index, ms."""
    import torch

    from components.index.search import top_k
    torch.set_num_threads(threads)
    rng = np.random.default_rng(1)
    index = rng.standard_normal((index_rows, dim)).astype(np.float32)
    index /= np.linalg.norm(index, axis=1, keepdims=True)
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        top_k(index, index[i % index_rows], 10, exclude=i % index_rows)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99), "threads": threads}


async def drive(url: str, bodies: list[bytes], concurrency: int, seconds: float, path: str = "/embed",
                per_body: int = 1) -> dict:
    """``concurrency`` workers post ``bodies`` (pre-encoded JSON) round-robin for ``seconds``, each
    waiting for its answer before the next; throughput and per-request latency. The load generator
    is aiohttp (lighter than httpx: it shares this machine's cores with the server)."""
    import aiohttp
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    counter = iter(range(10 ** 9))
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base_url=url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                body = bodies[next(counter) % len(bodies)]
                t0 = time.perf_counter()
                async with session.post(path, data=body, headers=headers) as r:
                    payload = await r.read()
                    if r.status != 200:
                        errors += 1
                        continue
                json.loads(payload)
                latencies.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors, "wall_s": wall,
            "embeddings_per_s": len(latencies) * per_body / wall,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99)}


def batch_sizes(url: str) -> dict:
    """Listings per model call so far, from the service's Prometheus histogram."""
    import httpx
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        for metric, key in (("item_embed_batch_listings_sum", "sum"), ("item_embed_batch_listings_count", "count"),
                            ("item_embed_batch_seconds_sum", "model_s")):
            if line.startswith(metric + " ") or line.startswith(metric + "{"):
                values[key] = values.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return values


def sequential(url: str, bodies: list[dict], path: str) -> dict:
    import httpx
    times = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for body in bodies:
            t0 = time.perf_counter()
            r = client.post(path, json=body)
            r.raise_for_status()
            r.json()
            times.append((time.perf_counter() - t0) * 1e3)
    return {"n": len(times), "p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99)}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("full", "tiny"), default="full")
    ap.add_argument("--bentoml-home", default=None, help="with --tag: the store holding the model")
    ap.add_argument("--tag", default=None, help="benchmark this packaged model instead of --model")
    ap.add_argument("--catalog", default=str(DEFAULT_CATALOG))
    ap.add_argument("--concurrency", default="1,4,16,32")
    ap.add_argument("--seconds", type=float, default=15.0, help="per concurrency level")
    ap.add_argument("--listings-per-request", type=int, default=1)
    ap.add_argument("--queries", type=int, default=256, help="distinct real listings used as requests")
    ap.add_argument("--batch-size", type=int, default=64, help="in-process batch = the service's max batch")
    ap.add_argument("--similar-requests", type=int, default=200)
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="the server's ITEM_TORCH_THREADS (0 = its default: all cores but one)")
    ap.add_argument("--json", default=None)
    return ap.parse_args(argv)


def _drive_levels(server, url: str, bodies: list[bytes], concurrency: str, seconds: float, per: int,
                  before: dict, inproc: dict) -> list[dict]:
    """/embed driven at each concurrency level for ``seconds``: throughput, latency, the batches the
    server formed, how busy its model was and its CPU per embedding, one dict a level."""
    levels = []
    for c in [int(x) for x in concurrency.split(",")]:
        cpu0 = server_cpu_seconds(server.proc.pid)
        res = asyncio.run(drive(url, bodies, c, seconds, per_body=per))
        res["server_cpu_s_per_embedding"] = (server_cpu_seconds(server.proc.pid) - cpu0) / max(1, res["requests"] * per)
        after = batch_sizes(url)
        calls = after.get("count", 0) - before.get("count", 0)
        res["mean_batch"] = (after.get("sum", 0) - before.get("sum", 0)) / calls if calls else float("nan")
        # share of the wall time the model was computing: ~1 means the model, not HTTP, is the limit
        res["model_busy"] = (after.get("model_s", 0) - before.get("model_s", 0)) / res["wall_s"]
        res["vs_in_process"] = res["embeddings_per_s"] / inproc["embeddings_per_s"]
        before = after
        levels.append(res)
        print(f"c={c:3d}: {res['embeddings_per_s']:.1f} embeddings/s ({res['vs_in_process']:.0%} of in-process), "
              f"p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, mean batch {res['mean_batch']:.1f}, "
              f"model busy {res['model_busy']:.0%}, server CPU {1e3 * res['server_cpu_s_per_embedding']:.2f} "
              f"ms/embedding, errors {res['errors']}", flush=True)
    return levels


def _print_tables(inproc: dict, levels: list[dict], by_id: dict, by_listing: dict, search: dict,
                 load_before: tuple, load_after: tuple) -> None:
    """The results as Markdown tables (embed by concurrency, /similar latencies)."""
    print()
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}")
    print("in-process baseline embeddings/s by batch size: "
          + ", ".join(f"{b}: {r:.1f}" for b, r in inproc["by_batch"].items()))
    print(f"| concurrency | embeddings/s | vs in-process ({inproc['embeddings_per_s']:.1f}/s) | p50 ms | p99 ms "
          f"| mean batch | model busy | server CPU ms/emb | in-process CPU ms/emb | CPU ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in levels:
        print(f"| {r['concurrency']} | {r['embeddings_per_s']:.1f} | {r['vs_in_process']:.0%} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['mean_batch']:.1f} | {r['model_busy']:.0%} | "
              f"{1e3 * r['server_cpu_s_per_embedding']:.2f} | {1e3 * r['in_process_cpu_s_per_embedding']:.2f} | "
              f"{r['cpu_overhead_ratio']:.2f}x |")
    print()
    print("| /similar over the index | n | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    print(f"| by product_id (exact search) | {by_id['n']} | {by_id['p50_ms']:.1f} | {by_id['p99_ms']:.1f} |")
    print(f"| by listing (embed + exact search) | {by_listing['n']} | {by_listing['p50_ms']:.1f} | "
          f"{by_listing['p99_ms']:.1f} |")
    print(f"| exact search alone, in-process | {200} | {search['p50_ms']:.2f} | {search['p99_ms']:.2f} |")


def main(argv: list[str] | None = None) -> dict:
    args = _parse_args(argv)

    catalog = Path(args.catalog)
    work = Path(tempfile.mkdtemp(prefix="item-bench-"))
    server = None
    try:
        model_dir = work / "model"
        described = build_model_folder(args.model, model_dir, args.bentoml_home, args.tag)
        index_df = read_catalog_columns(catalog)
        dim = json.loads((model_dir / "config.json").read_text())["hidden_size"]
        tag = package(model_dir, index_df, dim, work / "bentoml")
        queries = read_query_listings(catalog, args.queries)
        print(f"model: {described}; catalog index: {len(index_df)} x {dim} (random unit vectors)", flush=True)

        load_before = os.getloadavg()
        cores = os.cpu_count() or 2
        inproc = in_process_throughput(model_dir, queries, args.batch_size, sorted({1, cores}))
        print(f"in-process: {inproc['embeddings_per_s']:.1f} embeddings/s (batch {args.batch_size}, "
              f"{inproc['threads']} torch threads; by threads {inproc['by_threads']}; "
              f"by batch {inproc['by_batch']})", flush=True)

        env = {"BENTOML_HOME": str(work / "bentoml"), "ITEM_MODEL_TAG": tag,
               "ITEM_STORAGE_ROOT": str(work / "storage"), "ITEM_MAX_BATCH_SIZE": str(args.batch_size)}
        if args.torch_threads:
            env["ITEM_TORCH_THREADS"] = str(args.torch_threads)
        from serving.serving_check import LocalServer
        server = LocalServer(env, work / "server.log", timeout=180, cwd=ROOT)
        url = server.url

        per = args.listings_per_request
        listings = [{"title": t, "image": base64.b64encode(b).decode("ascii")}
                    for t, b in zip(queries["title"], queries["image_bytes"])]
        bodies = [json.dumps({"listings": listings[i:i + per]}).encode()
                  for i in range(0, len(listings) - per + 1, per)]
        asyncio.run(drive(url, bodies, 4, 3.0, per_body=per))  # warm-up (and the batcher's calibration)
        before = batch_sizes(url)
        levels = _drive_levels(server, url, bodies, args.concurrency, args.seconds, per, before, inproc)

        rng = np.random.default_rng(2)
        ids = rng.choice(index_df["product_id"].to_numpy(), size=args.similar_requests, replace=False)
        sequential(url, [{"product_id": str(i), "k": 10} for i in ids[:20]], "/similar")  # warm-up
        by_id = sequential(url, [{"product_id": str(i), "k": 10} for i in ids], "/similar")
        by_listing = sequential(url, [{"listing": listings[i % len(listings)], "k": 10}
                                      for i in range(args.similar_requests)], "/similar")
        search = search_latency(len(index_df), dim, args.torch_threads or max(1, cores - 1))
        load_after = os.getloadavg()
        print(f"/similar by product_id: p50 {by_id['p50_ms']:.1f} ms, p99 {by_id['p99_ms']:.1f} ms; "
              f"by listing: p50 {by_listing['p50_ms']:.1f} ms, p99 {by_listing['p99_ms']:.1f} ms; "
              f"exact search alone: p50 {search['p50_ms']:.2f} ms", flush=True)
        server.stop()
        threads_server = args.torch_threads or cores
        for res in levels:       # in-process CPU per embedding at the batch size the server formed
            b = max(1, int(round(res["mean_batch"]))) if res["mean_batch"] == res["mean_batch"] else 1
            res["in_process_cpu_s_per_embedding"] = in_process_cpu_per_embedding(model_dir, queries, b, threads_server)
            res["cpu_overhead_ratio"] = res["server_cpu_s_per_embedding"] / res["in_process_cpu_s_per_embedding"]
            print(f"c={res['concurrency']:3d}: in-process CPU {1e3 * res['in_process_cpu_s_per_embedding']:.2f} "
                  f"ms/embedding at batch {b} -> server/in-process CPU {res['cpu_overhead_ratio']:.2f}x", flush=True)
        again = in_process_throughput(model_dir, queries, args.batch_size, [inproc["threads"]])
        print(f"in-process again, after the server stopped: {again['embeddings_per_s']:.1f} embeddings/s "
              f"(by batch {again['by_batch']})", flush=True)
        if again["embeddings_per_s"] > inproc["embeddings_per_s"]:
            inproc = {**again, "by_threads": inproc["by_threads"], "first": inproc}
            for res in levels:
                res["vs_in_process"] = res["embeddings_per_s"] / inproc["embeddings_per_s"]
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    result = {"model": described, "catalog_rows": len(index_df), "dim": dim, "cpus": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "listings_per_request": per,
              "in_process": inproc, "embed": levels, "similar_by_product_id": by_id,
              "similar_by_listing": by_listing, "exact_search_in_process": search,
              "load_average_before": load_before, "load_average_after": load_after}
    _print_tables(inproc, levels, by_id, by_listing, search, load_before, load_after)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float) + "\n")
    return result


if __name__ == "__main__":
    main()
