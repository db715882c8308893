"""Which GPU a job uses when several jobs share a machine with several GPUs.

`snakemake --cores 16 --resources gpu=4` runs up to four GPU jobs at once, but Snakemake
does not say which device each should take. A job that resolves `cuda` (or `auto`) on a
machine with more than one visible GPU claims the first free one: it holds an exclusive
`flock` on `<lock dir>/gpu<i>.lock` for as long as the process lives (the kernel releases it
when the process exits, however it exits). Under SLURM each job sees only its own GPU
(`CUDA_VISIBLE_DEVICES`), so the claim is trivially device 0.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path

ENV_LOCK_DIR = "PRUNEBENCH_GPU_LOCKS"
_held: dict[int, int] = {}  # device index -> open lock file descriptor of this process


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
