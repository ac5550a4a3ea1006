"""Data-parallel pre-training on a real distributed engine: two CPU processes under ``torchrun``
(PyTorch DDP, gloo backend) against one process with the same global batch, on a real catalog slice.

Dropout is switched off in this test so that the only difference left between the two runs is the
order of floating-point sums (gradients all-reduced over two ranks vs summed in one batch); with
dropout on, each rank draws its own masks and the curves agree only statistically.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

# InfoNCE is off here: its in-batch negatives are each rank's own rows, so under DDP it is a
# different (per-rank) objective from the one-process one by design (item_model/train.py)
MODEL = {"num_hidden_layers": 1, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
         "infonce_weight": 0.0}
TRAIN = {"steps": 6, "batch_size": 8, "warmup_steps": 2, "log_every": 1, "seed": 0, "num_threads": 1}
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def _run(cmd: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_two_ranks_match_one_process_with_the_same_global_batch(tmp_path, packaged_model):
    catalog = packaged_model["catalog_dir"]
    args = ["-m", "components.steps.torchrun_pretrain", catalog, "{out}", "--model-config", json.dumps(MODEL),
            "--train-config", json.dumps(TRAIN)]
    one = tmp_path / "one"
    _run([sys.executable] + [a.replace("{out}", str(one)) for a in args])
    two = tmp_path / "two"
    log = _run([TORCHRUN, "--standalone", "--nproc_per_node", "2"] + [a.replace("{out}", str(two)) for a in args])
    assert "rank 1/2 joined the gloo process group" in log

    assert json.loads((two / "training.json").read_text())["world_size"] == 2
    assert json.loads((one / "training.json").read_text())["world_size"] == 1
    h1 = json.loads((one / "training_curve.json").read_text())
    h2 = json.loads((two / "training_curve.json").read_text())
    assert [r["step"] for r in h1] == [r["step"] for r in h2] == list(range(0, 7))   # step 0: before any update
    for key in ("loss", "mlm", "gmlm", "mim", "gmim", "itm"):
        a, b = np.array([r[key] for r in h1]), np.array([r[key] for r in h2])
        np.testing.assert_allclose(b, a, rtol=2e-3, err_msg=key)
    # the loss curve must move, or matching it would prove little
    assert abs(h1[-1]["loss"] - h1[0]["loss"]) > 1e-3
    w1, w2 = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=5e-4), k


def test_global_batch_must_split_evenly_over_ranks(tmp_path, packaged_model):
    train = {**TRAIN, "batch_size": 7, "steps": 1}
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "components.steps.torchrun_pretrain",
                           packaged_model["catalog_dir"], str(tmp_path / "m"), "--model-config", json.dumps(MODEL),
                           "--train-config", json.dumps(train)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    assert "batch_size=7 is not a multiple of the world size 2" in proc.stdout + proc.stderr
    assert not (tmp_path / "m").exists()


def _torchrun(catalog: str, out: Path, ckpt: Path, train: dict, resume: bool) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "components.steps.torchrun_pretrain",
           catalog, str(out), "--model-config", json.dumps({"num_hidden_layers": 1}),
           "--train-config", json.dumps(train), "--checkpoint-root", str(ckpt)] + (["--resume"] if resume else [])
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)              # its own process group, killed as one


def test_two_ranks_sigkilled_and_resumed_equal_an_uninterrupted_run(tmp_path, packaged_model):
    """Both torchrun ranks are SIGKILLed mid-run and resumed; the weights must equal an uninterrupted
    2-rank run bit for bit. Dropout is on, so each rank's own RNG stream must be saved and restored
    (a checkpoint holding rank 0's RNG alone hands rank 1 the wrong dropout masks after resume)."""
    import signal
    import time
    catalog = packaged_model["catalog_dir"]
    train = {**TRAIN, "steps": 16, "log_every": 4, "checkpoint_every": 4, "keep_checkpoints": 2}
    ref = _torchrun(catalog, tmp_path / "ref", tmp_path / "ckpt-ref", train, resume=False)
    assert ref.wait(timeout=600) == 0, ref.stdout.read()[-3000:]

    victim = _torchrun(catalog, tmp_path / "run", tmp_path / "ckpt", train, resume=False)
    deadline = time.time() + 600
    while not list((tmp_path / "ckpt").glob("*/ckpt-00000008.json")):
        assert victim.poll() is None, "training ended before it could be killed: " + victim.stdout.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)                 # torchrun and both ranks, a real crash
    victim.wait(timeout=60)
    assert not (tmp_path / "run" / "model.safetensors").exists()

    resumed = _torchrun(catalog, tmp_path / "run", tmp_path / "ckpt", train, resume=True)
    log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log[-3000:]
    assert "rank0" in log and "rank1" in log and "resuming from" in log
    a, b = load_file(tmp_path / "ref" / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
