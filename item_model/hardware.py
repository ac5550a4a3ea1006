"""What the CPU can do, read once where a choice depends on it (bf16 autocast)."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.lru_cache(maxsize=8)
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU computes bf16 matrix products natively (x86 ``avx512_bf16`` or ``amx_bf16``
    in ``cpuinfo``'s flags), where PyTorch's oneDNN kernels run bf16 autocast faster than fp32 (on
    this project's CPU: 1.7-2.0x the fp32 training samples/s with the fused AdamW, docs/results.md);
    elsewhere bf16 is emulated and slower, so ``"auto"`` keeps fp32. False when ``cpuinfo`` cannot
    be read (not Linux). Read once per ``cpuinfo`` path (cached): it is asked on every embedding call."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})
