"""Taking a model out: one standalone file that runs without prunebench, and ONNX Runtime.

`prunebench export RUN --format FORMAT [--out PATH]` (or `export_run`) writes the model of a
finished run directory (`results/runs/<kind>/<hash>`) as one file, by default
`RUN/export/model.<ext>` (a subdirectory, so the run's own files and checksums are
untouched). Formats (`FORMATS`):

- "onnx" (`.onnx`): `torch.onnx.export(..., dynamo=True)`, the torch.export-based exporter
  that torch has made the default (the TorchScript-based one is deprecated and will be
  removed), opset `OPSET`, graph optimised by onnxscript. One input "input" of shape
  [batch, *input_shape] (float32), one output "logits" [batch, classes]. Needs the optional
  `export` extra (onnx, onnxscript, onnxruntime): `pip install "prunebench[export]"`.
- "torchscript" (`.pt`): `torch.jit.trace`, loadable with `torch.jit.load` or LibTorch (C++).
  torch deprecates TorchScript in favour of torch.export; kept for runtimes that still load
  it, while torch has it. A trace records the path the example took: the registered models
  have no data-dependent branches, and their batch sizes follow the input (tested).
- "exported_program" (`.pt2`): `torch.export.export` saved by `torch.export.save`; load with
  `torch.export.load(path).module()`.

Every format has a dynamic batch dimension (exported at batch 2, valid at any batch >= 1).

Guarantees:
- The network exported is the run's model as `prunebench.load_run` rebuilds it, in eval mode
  (BatchNorm on its running statistics, dropout off): a channel-pruned run exports as the
  smaller network (its `edits` replayed), a masked run with its pruned weights exact zeros
  (its mask applied again), so the file's weight tensors hold the same zeros.
- Before a file is written, its bytes are loaded back with the format's own runtime (ONNX
  Runtime for onnx) and run on seeded standard-normal batches of 1 and 3 samples (neither
  the exported batch size): the outputs must equal
  PyTorch's eval-mode outputs within `ATOL` + `RTOL` * |output| (fp32), else the export
  fails. The largest difference is reported (`max_abs_diff`).
- The file is written atomically (`prunebench.io.atomic_write`): a failed or interrupted
  export leaves nothing half-written, and an existing file is replaced only by a complete one.

ONNX Runtime is also an execution mode of the benchmark stage ("onnxruntime",
`prunebench.metrics.benchmark`): `onnx_runtime_model` exports the benchmarked model exactly
as above (in memory) and runs it in an `InferenceSession` on CPU with `session_settings`:
`intra_op_num_threads` = torch's thread count of the job (its threads spin between calls,
ORT's default), one inter-op thread, sequential execution, graph optimisation level
`GRAPH_OPTIMIZATION` (ORT_ENABLE_ALL, the level a deployment uses: fusions, BatchNorm folded,
constant folding and the NCHWc layout, which follows the CPU's vector width, so ORT's float
rounding may differ between CPU kinds, as torch's kernels' does).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import logging
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunebench.errors import ConfigError
from prunebench.io import atomic_write

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "exported_program": ".pt2"}
EXTRA = "export"
INSTALL = f'pip install "prunebench[{EXTRA}]"'
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # exporter (onnx, onnxscript), runtime
OPSET = 20
INPUT_NAME, OUTPUT_NAME = "input", "logits"
EXPORT_BATCH = 2  # not 0 or 1, which torch.export would specialise the batch dimension to
GRAPH_OPTIMIZATION = "ORT_ENABLE_ALL"
# fp32; ORT's largest difference over the registered models is 3.6e-5 (ResNet-56, outputs
# ~6), well inside atol + rtol * |output| (tests/test_export.py)
ATOL = RTOL = 1e-4


class ExportError(ConfigError):
    """An export that cannot be made here (missing extra) or failed its check; one line."""


def missing_packages(packages: Sequence[str] = ONNX_PACKAGES) -> list[str]:
    """The packages of the `export` extra that cannot be imported here."""
    missing = []
    for name in packages:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def onnx_unavailable_reason() -> str | None:
    """Why ONNX export and ONNX Runtime cannot run here (None if they can)."""
    missing = missing_packages()
    if not missing:
        return None
    return (f"{', '.join(missing)} not installed: the ONNX exporter and ONNX Runtime are the "
            f"optional `{EXTRA}` extra ({INSTALL})")


def _example(input_shape: Sequence[int], batch: int = EXPORT_BATCH, seed: int = 0) -> Tensor:
    return torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(seed))


def _dynamic_batch() -> tuple[dict[int, Any], ...]:
    return ({0: torch.export.Dim("batch", min=1)},)


_CHATTY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the exporters' chatter (deprecation warnings, the notice that torchvision's ops
    are not registered, progress prints) off stdout, where the CLI writes its JSON line."""
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _eval_copy(model: nn.Module) -> nn.Module:
    """A CPU copy in eval mode: the caller's model, device and mode are left as they were."""
    return copy.deepcopy(model).cpu().eval()


def onnx_bytes(model: nn.Module, input_shape: Sequence[int]) -> bytes:
    """The serialised ONNX model of `model` (see the module docstring); raises
    `ExportError` naming the extra when its packages are missing."""
    reason = onnx_unavailable_reason()
    if reason:
        raise ExportError(f"cannot export to onnx: {reason}")
    work = _eval_copy(model)
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            work, (_example(input_shape),), dynamo=True, opset_version=OPSET,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=_dynamic_batch(), external_data=False, verbose=False)
    return program.model_proto.SerializeToString()


def torchscript_bytes(model: nn.Module, input_shape: Sequence[int]) -> bytes:
    work = _eval_copy(model)
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(work, _example(input_shape), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def exported_program_bytes(model: nn.Module, input_shape: Sequence[int]) -> bytes:
    work = _eval_copy(model)
    with _quiet():
        program = torch.export.export(work, (_example(input_shape),),
                                      dynamic_shapes=_dynamic_batch())
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
    return buffer.getvalue()


def session_settings(threads: int | None = None) -> dict[str, Any]:
    """How ONNX Runtime sessions are made (recorded with every ORT measurement)."""
    import onnxruntime

    return {"onnxruntime_version": onnxruntime.__version__, "opset": OPSET,
            "exporter": "torch.onnx.export(dynamo=True)",
            "providers": ["CPUExecutionProvider"],
            "intra_op_num_threads": torch.get_num_threads() if threads is None else threads,
            "inter_op_num_threads": 1, "execution_mode": "ORT_SEQUENTIAL",
            "graph_optimization_level": GRAPH_OPTIMIZATION,
            "intra_op_allow_spinning": True}  # ORT's default, like torch's OpenMP threads


def ort_session(onnx_model: bytes, threads: int | None = None):
    """An `onnxruntime.InferenceSession` on CPU with `session_settings(threads)`."""
    import onnxruntime as ort

    settings = session_settings(threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings["intra_op_num_threads"]
    options.inter_op_num_threads = settings["inter_op_num_threads"]
    options.execution_mode = getattr(ort.ExecutionMode, settings["execution_mode"])
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION)
    options.add_session_config_entry("session.intra_op.allow_spinning",
                                     "1" if settings["intra_op_allow_spinning"] else "0")
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(onnx_model, options, providers=settings["providers"])


class OnnxRuntimeModel(nn.Module):
    """An ONNX model in an ONNX Runtime session, called like the torch model it came from:
    a CPU float tensor in, the first output as a CPU tensor out (no copy either way)."""

    def __init__(self, onnx_model: bytes, threads: int | None = None):
        super().__init__()
        self.session = ort_session(onnx_model, threads)
        self.settings = session_settings(threads)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: Tensor) -> Tensor:
        array = x.detach().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def onnx_runtime_model(model: nn.Module, input_shape: Sequence[int],
                       threads: int | None = None) -> OnnxRuntimeModel:
    """`model` exported to ONNX (in memory) and run by ONNX Runtime on CPU."""
    return OnnxRuntimeModel(onnx_bytes(model, input_shape), threads)


def _load_torchscript(data: bytes) -> Callable[[Tensor], Tensor]:
    with _quiet():
        return torch.jit.load(io.BytesIO(data), map_location="cpu")


def _load_exported_program(data: bytes) -> Callable[[Tensor], Tensor]:
    with _quiet():
        return torch.export.load(io.BytesIO(data)).module()


# format -> (bytes of the model, what runs those bytes)
_EXPORTERS: dict[str, tuple[Callable[[nn.Module, Sequence[int]], bytes],
                            Callable[[bytes], Callable[[Tensor], Tensor]]]] = {
    "onnx": (onnx_bytes, OnnxRuntimeModel),
    "torchscript": (torchscript_bytes, _load_torchscript),
    "exported_program": (exported_program_bytes, _load_exported_program),
}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    return fmt


def export_bytes(model: nn.Module, input_shape: Sequence[int], fmt: str,
                 check_batches: Sequence[int] = (1, 3)) -> tuple[bytes, float]:
    """`model` in format `fmt`, and the largest |exported - eager| output difference over
    seeded batches of each size in `check_batches`; raises `ExportError` when it exceeds
    `ATOL` + `RTOL` * |eager output|."""
    check_format(fmt)
    make, load = _EXPORTERS[fmt]
    data = make(model, input_shape)
    runner = load(data)
    reference = _eval_copy(model)
    worst = 0.0
    for i, batch in enumerate(check_batches):
        x = _example(input_shape, batch, seed=1 + i)
        with torch.no_grad():
            expected = reference(x)
            got = runner(x)
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=RTOL, atol=ATOL):
            diff = (float((got - expected).abs().max()) if got.shape == expected.shape
                    else f"shape {tuple(got.shape)} != {tuple(expected.shape)}")
            raise ExportError(f"the {fmt} export differs from the PyTorch model at batch "
                              f"{batch} (max |diff| {diff}; allowed atol {ATOL:g} + rtol "
                              f"{RTOL:g}); nothing written")
        worst = max(worst, float((got - expected).abs().max()))
    return data, worst


def _run_dir(path: Path) -> tuple[Path, Path | None]:
    """A finished run directory holding a model, and its mask file (if masked); a one-line
    `ExportError` naming what is wrong otherwise."""
    what = f"prunebench export: {str(path)!r}"
    hint = "runs are results/runs/<kind>/<hash> directories holding model.pt"
    if not path.is_dir():
        raise ExportError(f"{what} is not a run directory (it does not exist); {hint}")
    if not (path / "model.pt").is_file() or not (path / "arch.json").is_file():
        of = ""
        config = path / "config.json"
        if config.is_file():
            with contextlib.suppress(ValueError, OSError):
                measured = json.loads(config.read_text()).get("of")
                of = f" (it measures {measured}: export that run)" if measured else ""
        raise ExportError(f"{what} is not a run directory with a model (no model.pt and "
                          f"arch.json){of}; {hint}")
    if not (path / "metrics.json").is_file():
        raise ExportError(f"{what} is an unfinished run (no metrics.json yet); only finished "
                          "runs are exported: wait for its job, or run it again")
    mask = path / "mask.pt"
    return path, mask if mask.is_file() else None


def load_export_model(run_dir: str | Path) -> tuple[nn.Module, tuple[int, ...]]:
    """The model of a finished run on CPU, in eval mode, with its mask applied again; and
    the input shape of one sample."""
    from prunebench.pruning.mask import apply_mask, load_mask
    from prunebench.runs import load_run_model

    path, mask_file = _run_dir(Path(run_dir))
    model, arch = load_run_model(path, device="cpu")
    if mask_file is not None:
        apply_mask(model, load_mask(mask_file))
    return model.eval(), tuple(arch.input_shape)


def default_path(run_dir: str | Path, fmt: str) -> Path:
    return Path(run_dir) / "export" / f"model{FORMATS[fmt]}"


def export_run(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None) -> dict:
    """Write the model of finished run `run_dir` in format `fmt` to `out` (default
    `default_path`; an existing directory gets `model.<ext>` inside), checked as the module
    docstring says; a summary of what was written."""
    check_format(fmt)
    if fmt == "onnx":
        reason = onnx_unavailable_reason()
        if reason:
            raise ExportError(f"prunebench export --format onnx: {reason}")
    model, input_shape = load_export_model(run_dir)
    target = default_path(run_dir, fmt) if out is None else Path(out)
    if target.is_dir():
        target = target / f"model{FORMATS[fmt]}"
    try:
        data, diff = export_bytes(model, input_shape, fmt)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 (an exporter's own failure, as one line)
        first = str(err).strip().splitlines()[0] if str(err).strip() else "failed"
        raise ExportError(f"cannot export {str(run_dir)!r} to {fmt}: "
                          f"{type(err).__name__}: {first}") from err
    atomic_write(target, lambda fh: fh.write(data), mode="wb")
    return {"path": str(target), "format": fmt, "run": str(run_dir), "bytes": len(data),
            "input_shape": ["batch", *input_shape],
            "params": sum(p.numel() for p in model.parameters()),
            "max_abs_diff": diff, "atol": ATOL, "rtol": RTOL}


__all__ = ["ATOL", "FORMATS", "OPSET", "RTOL", "ExportError", "OnnxRuntimeModel",
           "export_bytes", "export_run", "exported_program_bytes", "onnx_bytes",
           "onnx_runtime_model", "onnx_unavailable_reason", "session_settings",
           "torchscript_bytes"]
