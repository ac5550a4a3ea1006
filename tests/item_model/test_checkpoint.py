"""Checkpoint and resume: a training subprocess is SIGKILLed mid-run, resumed, and must end with the
same weights as an uninterrupted run (same seed, one thread); corrupted checkpoints are skipped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from item_model.checkpoint import load_latest_checkpoint, save_checkpoint

TRAIN = {"steps": 24, "batch_size": 4, "warmup_steps": 2, "log_every": 4, "seed": 0, "num_threads": 1,
         "checkpoint_every": 4, "keep_checkpoints": 2}
SCRIPT = ("import sys, json, logging; logging.basicConfig(level=logging.INFO); "
          "from components.steps.training import pretrain_step; "
          "pretrain_step(sys.argv[1], sys.argv[2], {'num_hidden_layers': 1}, json.loads(sys.argv[3]), "
          "progress=False, checkpoint_root=sys.argv[4], resume=sys.argv[5] == '1')")


def _train(catalog_dir: str, out: Path, ckpt: Path, resume: bool) -> subprocess.Popen:
    import json
    return subprocess.Popen([sys.executable, "-c", SCRIPT, catalog_dir, str(out), json.dumps(TRAIN), str(ckpt),
                             "1" if resume else "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_sigkill_and_resume_equals_uninterrupted_run(tmp_path, packaged_model):
    catalog = packaged_model["catalog_dir"]
    ref = _train(catalog, tmp_path / "ref", tmp_path / "ckpt-ref", resume=False)
    assert ref.wait(timeout=600) == 0, ref.stdout.read()[-2000:]

    victim = _train(catalog, tmp_path / "run", tmp_path / "ckpt", resume=False)
    deadline = time.time() + 600
    while not list((tmp_path / "ckpt").glob("*/ckpt-00000012.json")):
        assert victim.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)                                   # a real crash mid-run
    assert victim.wait() == -signal.SIGKILL
    assert not (tmp_path / "run" / "model.safetensors").exists()

    resumed = _train(catalog, tmp_path / "run", tmp_path / "ckpt", resume=True)
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out[-2000:]
    assert "resuming from" in out
    a = load_file(tmp_path / "ref" / "model.safetensors")
    b = load_file(tmp_path / "run" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    import json
    ha = json.loads((tmp_path / "ref" / "training_curve.json").read_text())
    hb = json.loads((tmp_path / "run" / "training_curve.json").read_text())
    assert [r["loss"] for r in ha] == [r["loss"] for r in hb]


def test_corrupted_and_partial_checkpoints_fall_back(tmp_path, caplog):
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, {"step": step, "w": torch.full((3,), float(step))}, keep=5)
    assert load_latest_checkpoint(tmp_path)["step"] == 6
    data = bytearray((tmp_path / "ckpt-00000006.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF                                          # flip a byte
    (tmp_path / "ckpt-00000006.pt").write_bytes(bytes(data))
    (tmp_path / "ckpt-00000004.json").unlink()                            # a write cut before its manifest
    with caplog.at_level("WARNING"):
        state = load_latest_checkpoint(tmp_path)
    assert state["step"] == 2 and torch.equal(state["w"], torch.full((3,), 2.0))
    assert "does not match" in caplog.text and "no manifest" in caplog.text


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["ckpt-00000004.pt", "ckpt-00000005.pt"]


class _Payload:
    """Unpickling this object would create the marker file (what a hostile writer of a shared checkpoint
    folder could do with ``torch.load(weights_only=False)``)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_that_would_run_code_is_refused(tmp_path, caplog):
    import hashlib
    import json
    folder, marker = tmp_path / "ckpt", tmp_path / "pwned"
    save_checkpoint(folder, 4, {"step": 4, "w": torch.ones(2)})                 # an honest, older one
    evil = folder / "ckpt-00000008.pt"
    torch.save({"step": 8, "w": torch.zeros(2), "extra": _Payload(marker)}, evil)
    digest = hashlib.sha256(evil.read_bytes()).hexdigest()                        # a valid manifest
    evil.with_suffix(".json").write_text(json.dumps({"step": 8, "sha256": digest, "bytes": evil.stat().st_size}))
    state = load_latest_checkpoint(folder)
    assert not marker.exists(), "unpickling ran code"
    assert state is not None and state["step"] == 4                               # fell back to the honest one
    assert "ckpt-00000008.pt" in caplog.text


def test_numpy_state_round_trips_through_weights_only():
    import random

    import numpy as np
    rng = np.random.default_rng(3)
    state = {"step": 1, "order": rng.permutation(10), "numpy_rng": np.random.get_state(),
             "python_rng": random.getstate(), "order_rng": rng.bit_generator.state, "sums": {"mlm": np.float32(1.5)}}
    from item_model.checkpoint import to_weights_only
    import io
    buf = io.BytesIO()
    torch.save(to_weights_only(state), buf)
    back = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert np.array_equal(np.asarray(back["order"]), state["order"]) and back["sums"]["mlm"] == 1.5
    name, key, pos, has_gauss, cached = back["numpy_rng"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))
    assert np.array_equal(np.random.get_state()[1], state["numpy_rng"][1])
    random.setstate(back["python_rng"])
    rng2 = np.random.default_rng()
    rng2.bit_generator.state = back["order_rng"]
    assert rng2.integers(1 << 30) == rng.integers(1 << 30)
