"""Model registry and the champion/challenger gate: promotion, blocking, significance, crash safety,
concurrent promotion and human overrides; the challenger and champion are real models evaluated on a
real catalog slice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from components.steps import training as steps
from components.promotion.gate import evaluate_gate
from components.registry import ConcurrentPromotionError, ModelRegistry, RegistryError
from components.promotion.bootstrap import load_details, paired_bootstrap

ITEM = str(Path(sys.executable).parent / "item")
GATE = {"floors": [{"metric": "item.recall@10", "min": 0.0}],
        "champion": {"metrics": ["recall@1", "mAP", "category_accuracy"], "tolerance": 0.005,
                     "bootstrap_resamples": 500},
        "validation": {"max_quarantine_fraction": 0.01}}


def _candidate(tmp: Path, packaged: dict, model_dir: str, registry: ModelRegistry, name: str) -> dict:
    """Evaluate ``model_dir`` against the registry's champion, gate it and register it (the pipeline's steps)."""
    out = tmp / name
    out.mkdir()
    steps.evaluate_step(packaged["catalog_dir"], model_dir, str(out / "eval.json"), modality_ablation=False,
                        progress=False, details_path=str(out / "details.npz"), registry_root=str(registry.root))
    blessing = steps.gate_step(str(out / "eval.json"), GATE, str(out / "blessing.json"), str(out / "report.md"),
                               str(out / "details.npz"), packaged["catalog_dir"], str(out / "report.html"))
    reg = steps.register_step(str(registry.root), model_dir, str(out / "eval.json"), str(out / "blessing.json"),
                              packaged["catalog_dir"], files={"gate_report.html": str(out / "report.html")})
    if reg["blessed"]:              # the pipeline runs the serving check in between (tests/serving)
        steps.promote_step(str(registry.root), reg["version"], str(out / "eval.json"))
    return {"blessing": blessing, **reg, "promoted": reg["blessed"], "dir": out}


@pytest.fixture(scope="module")
def worse_model(tmp_path_factory, packaged_model) -> str:
    """The packaged model with its image stream cut (patch projection zeroed: every photo looks the
    same), a realistic failure - a lost modality - that must not be promoted."""
    import torch

    from item_model.modeling_item import ItemModel
    from item_model.processing_item import ItemProcessor
    path = tmp_path_factory.mktemp("worse")
    model = ItemModel.from_pretrained(packaged_model["model_dir"])
    with torch.no_grad():
        model.patch_embedding.weight.zero_()
    model.save_pretrained(path)
    ItemProcessor.from_pretrained(packaged_model["model_dir"]).save_pretrained(path)
    return str(path)


def test_champion_challenger_flow(tmp_path, packaged_model, worse_model):
    registry = ModelRegistry(tmp_path / "registry")
    # no champion yet -> the no-regression criterion passes and says so; promoted
    first = _candidate(tmp_path, packaged_model, packaged_model["model_dir"], registry, "first")
    rows = [r for r in first["blessing"]["criteria"] if r["criterion"] == "no-regression"]
    assert len(rows) == 1 and rows[0]["passed"] and "no champion yet" in rows[0]["message"]
    assert first["promoted"] and registry.champion()["version"] == first["version"]

    # an equally good challenger (same weights) -> re-evaluated champion, no significant difference, promoted
    second = _candidate(tmp_path, packaged_model, packaged_model["model_dir"], registry, "second")
    eval2 = json.loads((second["dir"] / "eval.json").read_text())
    assert eval2["champion"]["version"] == first["version"]
    assert eval2["models"]["champion"]["recall@1"] == pytest.approx(eval2["models"]["item"]["recall@1"])
    sig = [r for r in second["blessing"]["criteria"] if r["criterion"] == "significance"]
    assert len(sig) == 3 and all(r["passed"] for r in sig)
    assert all("no significant difference" in r["message"] for r in sig)
    assert second["promoted"] and registry.champion()["version"] == second["version"]

    # a worse challenger -> blocked, champion unchanged, history says why
    third = _candidate(tmp_path, packaged_model, worse_model, registry, "third")
    assert third["blessing"]["blessed"] is False and not third["promoted"]
    assert registry.champion()["version"] == second["version"]
    failed = {(r["criterion"], r["metric"]) for r in third["blessing"]["criteria"] if not r["passed"]}
    assert ("no-regression", "item.recall@1") in failed and ("significance", "item.recall@1") in failed
    last = registry.history()[-1]
    assert last["action"] == "blocked" and last["version"] == third["version"] and "item.recall@1" in last["reason"]
    assert [h["action"] for h in registry.history()] == ["promote", "promote", "blocked"]

    # the HTML report renders the comparison, with inline images
    html = (registry.version_path(third["version"]) / "gate_report.html").read_text()
    assert "NOT BLESSED" in html and "Wins against champion" in html and "data:image/jpeg;base64," in html
    assert "Worst leaf categories" in html

    # human overrides through the CLI are recorded; reject of the champion rolls back
    env = {**os.environ, "ITEM_REGISTRY": str(registry.root), "COLUMNS": "300",
           "ITEM_STORAGE_ROOT": str(tmp_path / "storage")}
    run = lambda *a: subprocess.run([ITEM, "gate", *a], capture_output=True, text=True, env=env, timeout=120)
    # approve packages the version and runs the serving check first: a bound no server meets refuses it
    import yaml
    strict = tmp_path / "strict-gate.yaml"
    strict.write_text(yaml.safe_dump({**GATE, "serving_check": {"max_latency_ms": 0.001}}))
    home = str(tmp_path / "bentoml")
    p = run("approve", third["version"], "--reason", "looks fine to me", "--bentoml-home", home,
            "--gate-config", str(strict))
    assert p.returncode == 1 and "serving check failed" in p.stderr and "max_latency_ms" in p.stderr, p.stderr
    assert registry.champion()["version"] == second["version"]
    assert (registry.history()[-1]["action"], registry.history()[-1]["gate"]) == ("blocked", "serving check")
    p = run("approve", third["version"], "--reason", "looks fine to me", "--bentoml-home", home)
    assert p.returncode == 0, p.stderr
    assert "serving check passed" in p.stdout
    # the refused version never ran the pipeline's index steps: approve built its index with their code
    index_meta = json.loads((tmp_path / "storage" / "indexes" / third["version"] / "catalog_index" / "index.json").read_text())
    assert index_meta["model_version"] == third["version"] and index_meta["n"] > 400
    assert registry.champion()["version"] == third["version"] and registry.champion()["automatic"] is False
    p = run("reject", third["version"], "--reason", "broke search after all")
    assert p.returncode == 0, p.stderr
    assert registry.champion()["version"] == second["version"]
    actions = [(h["action"], h["automatic"]) for h in registry.history()[-4:]]
    assert actions == [("blocked", False), ("promote", False), ("reject", False), ("promote", False)]
    listing = run("list")
    assert "looks fine to me" in listing.stdout and "broke search" in listing.stdout
    shown = run("show", third["version"][:20])
    assert shown.returncode == 0 and "NOT BLESSED" in shown.stdout and "no-regression" in shown.stdout
    # a rejected version is never promoted automatically again
    with pytest.raises(RegistryError, match="rejected"):
        registry.promote(third["version"], gate="item-training gate", automatic=True, reason="retry")


def _details(recall: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    return {"retrieval": {"recall@1": recall, "recall@10": recall, "mAP": recall},
            "probe": {"y_true": y_true, "y_pred": y_pred}}


def test_significant_regression_on_one_metric_blocks_despite_gains():
    rng = np.random.default_rng(0)
    q, m = 800, 800
    champ_hits = (rng.random(q) < 0.80).astype(float)
    chall_hits = np.maximum(champ_hits, (rng.random(q) < 0.5).astype(float))          # search clearly better
    y = rng.choice(np.array(list("abcdefgh"), dtype=object), m)
    champ_pred = np.where(rng.random(m) < 0.95, y, "z").astype(object)
    chall_pred = np.where(rng.random(m) < 0.85, champ_pred, "z").astype(object)        # category clearly worse
    details = {"item": _details(chall_hits, y, chall_pred), "champion": _details(champ_hits, y, champ_pred)}
    acc = lambda d: float(np.mean(d["probe"]["y_true"] == d["probe"]["y_pred"]))
    eval_result = {"champion": {"version": "v1"}, "models": {
        "item": {"recall@1": chall_hits.mean(), "category_accuracy": acc(details["item"]), "mAP": chall_hits.mean()},
        "champion": {"recall@1": champ_hits.mean(), "category_accuracy": acc(details["champion"]),
                     "mAP": champ_hits.mean()}}}
    cfg = {"floors": [{"metric": "item.recall@1", "min": 0.0}],
           "champion": {"metrics": ["recall@1", "category_accuracy"], "tolerance": 0.2, "bootstrap_resamples": 1000}}
    b = evaluate_gate(eval_result, cfg, details)
    assert b["blessed"] is False
    rows = {(r["criterion"], r["metric"]): r for r in b["criteria"]}
    assert rows[("no-regression", "item.category_accuracy")]["passed"]              # within the wide tolerance...
    assert not rows[("significance", "item.category_accuracy")]["passed"]           # ...but significant: blocked
    assert "significant regression" in rows[("significance", "item.category_accuracy")]["message"]
    assert "significant improvement" in rows[("significance", "item.recall@1")]["message"]
    bs = paired_bootstrap(details["item"], details["champion"], "recall@1")
    assert bs["ci_low"] > 0 and bs["delta"] == pytest.approx(chall_hits.mean() - champ_hits.mean())


def test_missing_champion_metric_blocks_with_message():
    ev = {"champion": {"version": "v1"}, "models": {"item": {"recall@1": 0.9}, "champion": {}}}
    b = evaluate_gate(ev, {"floors": [{"metric": "item.recall@1", "min": 0}],
                           "champion": {"metrics": ["recall@1"]}})
    assert not b["blessed"] and "missing for the champion" in b["criteria"][1]["message"]
    b = evaluate_gate({"models": {"item": {"recall@1": 0.9}}}, {"floors": [{"metric": "item.recall@1", "min": 0}],
                      "baselines": {"metrics": ["recall@1"]}})
    assert not b["blessed"] and "missing" in b["criteria"][1]["message"]


def _crashed_promotion(tmp_path, packaged_model, point: str):
    """A champion, then a second version registered and promoted in a subprocess that is killed
    (``os._exit(137)``) at ``point`` of :meth:`ModelRegistry.promote`. Returns (registry, old, process)."""
    registry = ModelRegistry(tmp_path / "registry")
    old = registry.register(packaged_model["model_dir"], {}, {"blessed": True})
    registry.promote(old, gate="test", automatic=True, reason="first")
    code = ("import sys; from components.registry import ModelRegistry; r = ModelRegistry(sys.argv[1]); "
            "v = r.register(sys.argv[2], {}, {'blessed': True}); print(v, flush=True); "
            "r.promote(v, gate='test', automatic=True, reason='second')")
    proc = subprocess.run([sys.executable, "-c", code, str(registry.root), packaged_model["model_dir"]],
                          capture_output=True, text=True, env={**os.environ, "ITEM_REGISTRY_CRASH": point})
    return registry, old, proc


def test_crash_between_version_and_pointer_keeps_old_champion(tmp_path, packaged_model):
    registry, old, proc = _crashed_promotion(tmp_path, packaged_model, "before-pointer")
    assert proc.returncode == 137                                         # killed mid-promotion
    new = proc.stdout.strip()
    assert new in registry.versions()                                     # the version is complete...
    assert registry.champion()["version"] == old                          # ...the old champion is intact
    assert [h["version"] for h in registry.history()] == [old] and registry.check() == []
    assert not [p for p in registry.versions_dir.iterdir() if p.name.startswith(".")]


def test_concurrent_promotion_has_one_winner(tmp_path, packaged_model):
    registry = ModelRegistry(tmp_path / "registry")
    a = registry.register(packaged_model["model_dir"], {}, {})
    b = registry.register(packaged_model["model_dir"], {}, {})
    seen = 0                                                              # both decided against generation 0
    registry.promote(a, gate="run-a", automatic=True, reason="a", expected_generation=seen)
    with pytest.raises(ConcurrentPromotionError, match="moved"):
        registry.promote(b, gate="run-b", automatic=True, reason="b", expected_generation=seen)
    assert registry.champion()["version"] == a and len(registry.history()) == 1


def test_versions_are_immutable_and_resolvable(tmp_path, packaged_model):
    registry = ModelRegistry(tmp_path / "registry")
    v = registry.register(packaged_model["model_dir"], {"eval.json": packaged_model["eval_path"]}, {"run": "x"})
    assert (registry.version_path(v) / "model" / "model.safetensors").exists()
    assert registry.info(v)["run"] == "x" and registry.resolve("latest") == v and registry.resolve(v[:12]) == v
    with pytest.raises(RegistryError, match="no champion"):
        registry.resolve("champion")
    with pytest.raises(RegistryError, match="unknown model version"):
        registry.promote("nope", gate="t", automatic=True, reason="r")
    details = load_details  # imported for the npz round trip below
    from components.promotion.bootstrap import save_details
    save_details(tmp_path / "d.npz", {"item": _details(np.ones(3), np.array(["a", "b", "c"], dtype=object),
                                                       np.array(["a", "b", "b"], dtype=object))})
    back = details(tmp_path / "d.npz")
    assert back["item"]["probe"]["y_pred"].tolist() == ["a", "b", "b"]


def test_a_version_cannot_be_overwritten(tmp_path, packaged_model, monkeypatch):
    """Registering the same weights again in the same microsecond would give the same version id: the
    second registration is refused and the stored version is left exactly as it was."""
    from datetime import datetime, timezone

    from components import registry as registry_module
    
    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 12, 3, 8, 0, 0, 123456, tzinfo=timezone.utc)

    monkeypatch.setattr(registry_module, "datetime", FrozenClock)
    registry = ModelRegistry(tmp_path / "registry")
    v = registry.register(packaged_model["model_dir"], {"eval.json": packaged_model["eval_path"]}, {"run": "first"})
    folder = registry.version_path(v)
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(RegistryError, match=f"version {v} already exists; versions are immutable"):
        registry.register(packaged_model["model_dir"], {}, {"run": "second"})
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before and registry.info(v)["run"] == "first"
    assert [p.name for p in (tmp_path / "registry" / "versions").iterdir()] == [v]     # no staging left


@pytest.mark.parametrize("damage", ["pointer-not-json", "pointer-no-version", "history-half-written"])
def test_corrupt_registry_files_give_errors_naming_the_file(tmp_path, packaged_model, damage):
    """A damaged champion.json or a half-written last history line: `item gate show/list/approve` and
    `item serve` stop with a message naming the file (exit 1, no traceback); nothing is overwritten."""
    registry = ModelRegistry(tmp_path / "registry")
    v = registry.register(packaged_model["model_dir"], {}, {"blessed": True})
    registry.promote(v, gate="test", automatic=True, reason="first")
    if damage == "pointer-not-json":
        Path(registry.pointer_path).write_text('{"version": "' + v[:10])           # truncated write
        name, line = "champion.json", None
    elif damage == "pointer-no-version":
        Path(registry.pointer_path).write_text("[]")
        name, line = "champion.json", None
    else:
        with open(registry.history_path, "a") as f:
            f.write('{"action": "promote", "vers')                                # crash mid-append
        name, line = "history.jsonl", "line 2"
    before = {p: p.read_bytes() for p in Path(registry.root).glob("*.json*")}
    with pytest.raises(RegistryError, match=name):
        registry.check() if damage.startswith("history") else registry.champion()
    env = {**os.environ, "ITEM_REGISTRY": str(registry.root), "COLUMNS": "300",
           "BENTOML_HOME": str(tmp_path / "bentoml"), "ITEM_STORAGE_ROOT": str(tmp_path)}
    commands = [["gate", "list"], ["gate", "approve", v, "--reason", "x", "--no-package", "--no-serving-check"]]
    if not damage.startswith("history"):
        commands += [["gate", "show", "champion"], ["serve", "--port", "59997"]]
    for args in commands:
        p = subprocess.run([ITEM, *args], capture_output=True, text=True, env=env, timeout=120)
        out = p.stdout + p.stderr
        assert p.returncode == 1, (args, out[-2000:])
        assert name in out and "Traceback" not in out, (args, out[-2000:])
        if line:
            assert line in out
    assert {p: p.read_bytes() for p in Path(registry.root).glob("*.json*")} == before


def test_crash_between_pointer_and_history_is_reported_and_repaired(tmp_path, packaged_model):
    registry, old, proc = _crashed_promotion(tmp_path, packaged_model, "after-pointer")
    assert proc.returncode == 137                                         # killed between pointer and history
    new = proc.stdout.strip()
    assert registry.champion()["version"] == new
    assert [h["version"] for h in registry.history()] == [old]           # the line is lost...
    assert registry.check() == [f"champion {new} has no promotion in the history"]      # ...and reported
    env = {**os.environ, "ITEM_REGISTRY": str(registry.root), "COLUMNS": "300",
           "ITEM_STORAGE_ROOT": str(tmp_path / "storage")}
    listing = subprocess.run([ITEM, "gate", "list"], capture_output=True, text=True, env=env, timeout=120)
    assert "has no promotion in the history" in listing.stdout and "item gate repair" in listing.stdout
    fixed = subprocess.run([ITEM, "gate", "repair"], capture_output=True, text=True, env=env, timeout=120)
    assert fixed.returncode == 0 and "recovered" in fixed.stdout, fixed.stderr
    line = registry.history()[-1]
    assert (line["version"], line["action"], line["reason"]) == (new, "promote", "second") and line["recovered"]
    assert registry.check() == [] and registry.repair() is False         # idempotent


def test_staging_of_a_killed_registration_is_cleaned_by_the_next(tmp_path, packaged_model):
    root = tmp_path / "registry"
    code = ("import sys; from components.registry import ModelRegistry; "
            "ModelRegistry(sys.argv[1]).register(sys.argv[2], {}, {'blessed': True})")
    proc = subprocess.run([sys.executable, "-c", code, str(root), packaged_model["model_dir"]],
                          capture_output=True, text=True, env={**os.environ, "ITEM_REGISTRY_CRASH": "during-staging"})
    assert proc.returncode == 137                                         # a real kill mid-registration
    leftovers = [p for p in (root / "versions").iterdir() if p.name.startswith(".")]
    assert len(leftovers) == 1 and (leftovers[0] / "model").is_dir()
    ModelRegistry(root).register(packaged_model["model_dir"], {}, {"blessed": True})
    assert leftovers[0].exists()                                          # younger than the grace period: kept
    registry = ModelRegistry(root, staging_grace_s=0)
    v = registry.register(packaged_model["model_dir"], {}, {"blessed": True})
    assert not leftovers[0].exists() and v in registry.versions() and len(registry.versions()) == 2
