"""Energy counters read around the timed loop: NVML on CUDA, RAPL on CPU, or nothing.

Both are cumulative hardware counters, never a model of power: NVML's total energy of the GPU
board since the driver loaded (mJ, Volta and later), and RAPL's energy of each CPU package
(µJ, wrapping at `max_energy_range_uj`). They measure the whole device, idle power and other
processes included, so the energy per sample is an upper bound for the model alone, and it
needs a loop long enough for the counter's update period (tens of ms). Where no counter can
be read the benchmark reports null with the reason, and never an estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

POWERCAP = Path("/sys/class/powercap")


@dataclass(frozen=True)
class EnergyCounter:
    """Raw cumulative counters (one per domain) and how to turn two reads into mJ."""

    method: str
    read: Callable[[], tuple[int, ...]]
    wrap: tuple[int, ...]  # each counter's range; 0 where it does not wrap
    mj_per_unit: float

    def mj_between(self, before: tuple[int, ...], after: tuple[int, ...]) -> float:
        """Energy between two reads, across at most one wrap of each counter."""
        units = sum((b - a) % w if w else b - a for a, b, w in zip(before, after, self.wrap))
        return units * self.mj_per_unit


def _nvml_counter(device: torch.device) -> tuple[EnergyCounter | None, str | None]:
    try:
        import pynvml
    except ImportError:
        return None, "no NVML: the nvidia-ml-py package is not installed"
    try:
        pynvml.nvmlInit()  # reference-counted by NVML; cheap to repeat
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        uuid = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"  # NVML's spelling
        handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except (pynvml.NVMLError, AttributeError) as error:  # AttributeError: a torch without .uuid
        return None, f"no NVML energy counter for {device}: {error}"

    def read() -> tuple[int, ...]:
        return (pynvml.nvmlDeviceGetTotalEnergyConsumption(handle),)

    return EnergyCounter("nvml_total_energy", read, (0,), 1.0), None


def rapl_counter(powercap: Path = POWERCAP) -> tuple[EnergyCounter | None, str | None]:
    """The sum of the CPU package domains (`intel-rapl:<n>`, also used by AMD), or why not."""
    if not powercap.is_dir():
        return None, f"RAPL not exposed: {powercap} missing"
    packages = sorted(p for p in powercap.glob("intel-rapl:*") if p.name.count(":") == 1)
    if not packages:
        return None, f"RAPL not exposed: no intel-rapl:<n> package domain under {powercap}"
    files = [p / "energy_uj" for p in packages]
    try:
        wrap = tuple(int((p / "max_energy_range_uj").read_text()) for p in packages)
        for path in files:
            int(path.read_text())
    except PermissionError as error:
        return None, (f"RAPL not readable: {error.strerror} on {error.filename} "
                      "(root only since Linux 5.10, CVE-2020-8694)")
    except (OSError, ValueError) as error:
        return None, f"RAPL not readable: {error}"

    def read() -> tuple[int, ...]:
        return tuple(int(path.read_text()) for path in files)

    return EnergyCounter("rapl_package", read, wrap, 1e-3), None


def energy_counter(device: torch.device, powercap: Path = POWERCAP
                   ) -> tuple[EnergyCounter | None, str | None]:
    """The counter for the device running the model, or None and why there is none."""
    if device.type == "cuda":
        return _nvml_counter(device)
    counter, reason = rapl_counter(powercap)
    return counter, None if counter else f"no NVML: device is {device.type}; {reason}"
