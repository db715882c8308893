"""Which GPU a job uses when several jobs share a machine with several GPUs.

`snakemake --cores 16 --resources gpu=4` runs up to four GPU jobs at once, but Snakemake
does not say which device each should take. A job that resolves `cuda` (or `auto`) on a
machine with more than one visible GPU claims the first free one: it holds an exclusive
`flock` on `<lock dir>/gpu<i>.lock` for as long as the process lives (the kernel releases it
when the process exits, however it exits). Under SLURM each job sees only its own GPU
(`CUDA_VISIBLE_DEVICES`), so the claim is trivially device 0.

Only the executor resolves a device (`prunebench.executor`); planning, and so the Snakemake
process, never does, so it never holds a GPU. Tests fake a machine with N GPUs by setting
`PRUNEBENCH_FAKE_GPUS=N`: devices are then claimed exactly as on such a machine, and the
work runs on the CPU.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ENV_LOCK_DIR = "PRUNEBENCH_GPU_LOCKS"
ENV_FAKE_GPUS = "PRUNEBENCH_FAKE_GPUS"  # tests: claim among N GPUs, compute on the CPU
ENV_WAIT_S = "PRUNEBENCH_GPU_WAIT_S"  # how long a job waits for a free GPU (default 600 s)
_held: dict[int, int] = {}  # device index -> open lock file descriptor of this process

log = logging.getLogger("prunebench")


def fake_gpus() -> int | None:
    """The GPU count `PRUNEBENCH_FAKE_GPUS` pretends this machine has (None: not set)."""
    value = os.environ.get(ENV_FAKE_GPUS)
    return None if value in (None, "") else int(value)


def resolve_device(device: str = "auto") -> torch.device:
    """`auto`: a GPU if there is one. `auto` or `cuda` on a machine with several GPUs: a free
    one, claimed for this process, so parallel jobs never share one. Only the executor calls
    this: planning must stay free of devices."""
    import torch

    fake = fake_gpus()
    if fake is not None and device in ("auto", "cuda"):
        index = claim_gpu(fake, wait_s=float(os.environ.get(ENV_WAIT_S, 600)))
        log.info("device: gpu %d of %d (faked by %s: computing on the cpu)", index, fake,
                 ENV_FAKE_GPUS)
        return torch.device("cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        index = claim_gpu(torch.cuda.device_count(),
                          wait_s=float(os.environ.get(ENV_WAIT_S, 600)))
        log.info("device: gpu %d of %d", index, torch.cuda.device_count())
        return torch.device("cuda", index)
    return torch.device(device)


def held() -> list[int]:
    """The GPU indices this process holds a claim on."""
    return sorted(_held)


def lock_dir() -> Path:
    default = Path(tempfile.gettempdir()) / f"prunebench-gpu-locks-{os.getuid()}"
    return Path(os.environ.get(ENV_LOCK_DIR, default))


def claim_gpu(count: int, wait_s: float = 600.0, poll_s: float = 0.5) -> int:
    """The index of a GPU no other prunebench process holds, among `count`; waits (up to
    `wait_s`) while all are taken, then fails naming the lock directory."""
    if count <= 1:
        return 0
    for index in _held:
        return index
    root = lock_dir()
    root.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        for index in range(count):
            fd = os.open(root / f"gpu{index}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            _held[index] = fd
            return index
        if time.monotonic() > deadline:
            raise RuntimeError(f"all {count} GPUs are held by other prunebench jobs (locks in "
                               f"{root}); run fewer GPU jobs at once (--resources gpu=N)")
        time.sleep(poll_s)
