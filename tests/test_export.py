"""Taking a model out (`prunebench export`, `prunebench.export`) and the benchmark's
onnxruntime execution mode.

Tolerance: every exported format must give PyTorch's eval-mode outputs within
atol = rtol = 1e-4 in fp32 (`torch.allclose(exported, eager, rtol=1e-4, atol=1e-4)`), the
tolerance `prunebench.export` itself checks before writing a file. No registered model needs
looser: ONNX Runtime (BatchNorm folded into the convolutions, NCHWc kernels) differs from eager
by at most 3.6e-5 (ResNet-56, whose outputs reach ~6; 1e-5 to 3e-5 for the VGGs and ResNet-18,
below 2e-6 for the small nets), some 20 times inside the allowed 1e-4 + 1e-4 * |output|;
TorchScript and the exported program run torch's own kernels and agree exactly. The models'
BatchNorm statistics are first set from a few random batches (as training would), so that the
outputs are of order 1 and the absolute tolerance means something: at initialisation VGG's
logits are ~1e-5 and ResNet-56's ~300.
"""

from __future__ import annotations

import io
import json
import sys

import pytest
import torch
from torch import nn

import prunebench
from prunebench import export
from prunebench.cli import main
from prunebench.io import atomic_torch_save, atomic_write_json
from prunebench.metrics import MODES, benchmark_model
from prunebench.metrics.benchmark import _mode_model
from prunebench.models import get_model, model_names
from prunebench.runs import Arch, Run

# The tests that export to ONNX or run ONNX Runtime need the `export` extra (`make install`
# installs it); the one that fakes its absence runs either way.
needs_onnx = pytest.mark.skipif(bool(export.missing_packages()),
                                reason='the `export` extra is not installed: pip install '
                                       '"prunebench[export]"')
# TorchScript is deprecated by torch (still there in 2.13): its warnings are expected here.
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning"),
              pytest.mark.usefixtures("one_thread")]  # tests/conftest.py

ATOL = RTOL = 1e-4
DIGITS, MNIST = (1, 8, 8), (1, 28, 28)
CLASSES = 10
# A small input every registered model takes (LeNet-5's convolutions need 28 x 28).
SMALL_INPUT = {name: MNIST if name == "lenet5" else DIGITS for name in model_names()}




@torch.no_grad()
def calibrated(name: str, shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """A registered model in eval mode with BatchNorm statistics of random inputs."""
    torch.manual_seed(seed)
    model = get_model(name, CLASSES, shape)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.momentum = None  # a plain average over the batches
        norm.reset_running_stats()
    if norms:
        model.train()
        for _ in range(4):
            model(torch.randn(16, *shape))
    return model.eval()


def inputs(shape, batch, seed=7):
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def assert_close(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert got.shape == expected.shape, what
    diff = float((got - expected).abs().max())
    assert torch.allclose(got, expected, rtol=RTOL, atol=ATOL), f"{what}: max |diff| {diff}"


def ort_outputs(data: bytes, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def check_every_format(model: nn.Module, shape: tuple[int, ...], what: str,
                       torch_formats: bool = True) -> bytes:
    """Export `model` to each format and compare each runtime's outputs with eager ones at
    two batch sizes (the export is at batch 2: the batch dimension must be dynamic);
    `torch_formats=False` checks ONNX Runtime only."""
    onnx_data = export.onnx_bytes(model, shape)
    runtimes = {"onnxruntime": lambda x: ort_outputs(onnx_data, x)}
    if torch_formats:
        runtimes["torchscript"] = torch.jit.load(io.BytesIO(export.torchscript_bytes(model, shape)))
        runtimes["exported_program"] = torch.export.load(
            io.BytesIO(export.exported_program_bytes(model, shape))).module()
    for batch in (1, 5):
        x = inputs(shape, batch)
        with torch.no_grad():
            expected = model(x)
            assert expected.abs().max() > 0.05, "outputs too small for the tolerance to test"
            for runtime, run in runtimes.items():
                assert_close(run(x), expected, f"{what} {runtime} b{batch}")
    return onnx_data


def initializers(data: bytes) -> dict[str, torch.Tensor]:
    import onnx

    graph = onnx.load_from_string(data).graph
    return {t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy())
            for t in graph.initializer}


# ---------------------------------------------------------------- every registered model


TORCH_FORMAT_MODELS = {"lenet_300_100", "lenet5", "cnn_digits_bn", "conv4", "vgg11_bn",
                       "resnet20"}


def test_every_registered_model_has_a_small_input():
    assert TORCH_FORMAT_MODELS <= set(model_names())
    assert set(SMALL_INPUT) == set(model_names())


@pytest.mark.slow
@pytest.mark.parametrize("name", model_names())
@needs_onnx
def test_every_registered_model_exports_and_runs_like_pytorch(name):
    """ONNX Runtime for every model; TorchScript and the exported program (both torch's own
    tracing, which ONNX's exporter shares) for one model of each family, to keep the suite's
    time: the deep ones take seconds per format."""
    shape = SMALL_INPUT[name]
    model = calibrated(name, shape)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_every_format(model, shape, name, torch_formats=name in TORCH_FORMAT_MODELS)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training


def channel_pruned(seed: int = 0) -> tuple[nn.Module, list]:
    model = calibrated("cnn_digits_bn", DIGITS, seed)
    result = prunebench.prune(model, "l1_filter", channel_sparsity=0.5,
                              example_inputs=torch.zeros(1, *DIGITS))
    return model.eval(), result.edits


def masked(seed: int = 0) -> tuple[nn.Module, dict]:
    model = calibrated("cnn_digits", DIGITS, seed)
    result = prunebench.prune(model, "global_magnitude", sparsity=0.8)
    return model.eval(), result.mask


@needs_onnx
def test_a_channel_pruned_model_exports_as_the_smaller_network():
    dense = calibrated("cnn_digits_bn", DIGITS)
    pruned, edits = channel_pruned()
    assert edits
    small = check_every_format(pruned, DIGITS, "l1_filter 0.5")
    params = lambda data: sum(t.numel() for t in initializers(data).values())  # noqa: E731
    assert params(small) < 0.5 * params(export.onnx_bytes(dense, DIGITS))


@needs_onnx
def test_a_masked_model_exports_with_its_zeros_in_place():
    model, mask = masked()
    data = check_every_format(model, DIGITS, "global_magnitude 0.8")
    weights = initializers(data)
    assert set(mask) <= set(weights)  # the initializers keep the parameter names
    for name, keep in mask.items():
        assert torch.equal(weights[name] == 0, ~keep), name
    zeros = sum(int((~keep).sum()) for keep in mask.values())
    assert sum(int((weights[n] == 0).sum()) for n in mask) == zeros > 0
    script = torch.jit.load(io.BytesIO(export.torchscript_bytes(model, DIGITS)))
    assert sum(int((p == 0).sum()) for n, p in script.state_dict().items() if n in mask) == zeros


# ---------------------------------------------------------------- `prunebench export`


def write_run(run_dir, model: nn.Module, name: str, edits=(), mask=None, finished=True):
    """A run directory as the executor finishes it (arch.json, model.pt, mask.pt if masked,
    metrics.json last)."""
    run_dir.mkdir(parents=True)
    arch = Arch(name, CLASSES, DIGITS, edits=tuple(edits))
    atomic_write_json(run_dir / "arch.json", arch.to_json())
    atomic_torch_save(model.state_dict(), run_dir / "model.pt")
    if mask is not None:
        atomic_torch_save(mask, run_dir / "mask.pt")
    if finished:
        atomic_write_json(run_dir / "metrics.json", {})
    return run_dir


def cli(capsys, *argv) -> tuple[int, str, list[str]]:
    code = main(["export", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


@pytest.mark.parametrize("fmt", [pytest.param(f, marks=needs_onnx) if f == "onnx" else f
                                 for f in export.FORMATS])
def test_export_writes_a_standalone_file_into_the_run_directory(tmp_path, capsys, fmt):
    model, edits = channel_pruned()
    run_dir = write_run(tmp_path / "runs" / "prune" / "abc", model, "cnn_digits_bn", edits)
    code, out, err = cli(capsys, run_dir, "--format", fmt)
    assert code == 0, err
    summary = json.loads(out)
    path = run_dir / "export" / f"model{export.FORMATS[fmt]}"
    assert summary["path"] == str(path) and path.is_file() and summary["format"] == fmt
    assert summary["params"] == sum(p.numel() for p in model.parameters())
    assert summary["max_abs_diff"] <= ATOL and summary["bytes"] == path.stat().st_size
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left
    x = inputs(DIGITS, 4)
    with torch.no_grad():
        expected = model(x)
        if fmt == "onnx":
            got = ort_outputs(path.read_bytes(), x)
        elif fmt == "torchscript":
            got = torch.jit.load(path)(x)
        else:
            got = torch.export.load(path).module()(x)
    assert_close(got, expected, f"prunebench export --format {fmt}")


@needs_onnx
def test_export_of_a_masked_run_to_a_chosen_path(tmp_path, capsys):
    model, mask = masked()
    run_dir = write_run(tmp_path / "run", model, "cnn_digits", mask=mask)
    out_file = tmp_path / "deploy" / "digits.onnx"
    code, out, err = cli(capsys, run_dir, "--format", "onnx", "--out", out_file)
    assert code == 0, err
    assert json.loads(out)["path"] == str(out_file) and not (run_dir / "export").exists()
    weights = initializers(out_file.read_bytes())
    assert sum(int((weights[n] == 0).sum()) for n in mask) == sum(
        int((~m).sum()) for m in mask.values())
    code, out, _ = cli(capsys, run_dir, "--format", "torchscript", "--out", tmp_path / "deploy")
    assert code == 0 and json.loads(out)["path"] == str(tmp_path / "deploy" / "model.pt")


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    model, _ = masked()
    run_dir = write_run(tmp_path / "run", model, "cnn_digits")
    unfinished = write_run(tmp_path / "half", model, "cnn_digits", finished=False)
    benchmark = tmp_path / "bench"
    benchmark.mkdir()
    (benchmark / "config.json").write_text(json.dumps({"of": "runs/recover/123"}))
    make, load = export._EXPORTERS["torchscript"]
    off = lambda data: (lambda x: load(data)(x) + 1e-3)  # noqa: E731  (a wrong runtime)
    monkeypatch.setitem(export._EXPORTERS, "torchscript", (make, off))
    cases = [
        ((tmp_path / "nowhere",), "is not a run directory (it does not exist)"),
        ((benchmark,), "no model.pt and arch.json) (it measures runs/recover/123"),
        ((unfinished,), "is an unfinished run (no metrics.json"),
        ((run_dir, "--format", "tflite"),
         "unknown export format 'tflite'; allowed: onnx, torchscript, exported_program"),
        ((run_dir, "--format", "torchscript"), "the torchscript export differs from the PyTorch"),
    ]
    for argv, message in cases:
        code, out, err = cli(capsys, *argv)
        assert code == 2 and out == "" and len(err) == 1, (argv, err)
        assert message in err[0], (argv, err)
    for directory in (run_dir, unfinished, benchmark):
        assert not (directory / "export").exists()


# ---------------------------------------------------------------- without the extra


def test_without_the_extra_the_mode_is_skipped_and_the_cli_names_it(tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    assert export.missing_packages() == ["onnxruntime"]
    record = benchmark_model(get_model("mlp_digits", CLASSES, DIGITS), DIGITS, mask=None,
                             device=torch.device("cpu"), batch_sizes=(2,), min_time_s=0.0,
                             warmup=0, modes=("dense", "onnxruntime"))
    reason = record["modes_skipped"]["onnxruntime"]
    assert "onnxruntime not installed" in reason and 'pip install "prunebench[export]"' in reason
    assert set(record["latency"]) == {"dense"} and record["mode_settings"] == {}

    model, _ = masked()
    run_dir = write_run(tmp_path / "run", model, "cnn_digits")
    code, out, err = cli(capsys, run_dir, "--format", "onnx")
    assert code == 2 and out == "" and len(err) == 1
    assert "onnxruntime not installed" in err[0] and "prunebench[export]" in err[0]
    assert not (run_dir / "export").exists()
    code, _, _ = cli(capsys, run_dir, "--format", "exported_program")  # torch alone
    assert code == 0 and (run_dir / "export" / "model.pt2").is_file()


# ---------------------------------------------------------------- the benchmark mode


@needs_onnx
def test_onnxruntime_is_a_benchmark_mode_with_stated_session_settings():
    assert "onnxruntime" in MODES
    model, mask = masked()
    threads = 2
    record = benchmark_model(model, DIGITS, mask=mask, device=torch.device("cpu"),
                             threads=threads, batch_sizes=(1, 8), min_time_s=0.01, warmup=2,
                             modes=("dense", "onnxruntime"))
    assert torch.get_num_threads() == 1  # restored
    assert set(record["latency"]) == {"dense", "onnxruntime"} and not record["modes_skipped"]
    assert set(record["latency"]["onnxruntime"]) == {"1", "8"}
    assert record["latency"]["onnxruntime"]["8"]["latency_median_ms"] > 0
    assert record["mode_output_max_abs_diff"]["onnxruntime"] < ATOL
    settings = record["mode_settings"]["onnxruntime"]
    assert settings == {**settings, "intra_op_num_threads": threads, "inter_op_num_threads": 1,
                        "execution_mode": "ORT_SEQUENTIAL",
                        "graph_optimization_level": "ORT_ENABLE_ALL", "opset": export.OPSET}
    import onnxruntime

    assert settings["onnxruntime_version"] == onnxruntime.__version__
    # On CUDA the mode is skipped with its reason (decided before anything touches CUDA).
    assert _mode_model("onnxruntime", model, torch.device("cuda"), DIGITS)[:2] == (
        None, "ONNX Runtime is measured on CPU only; device is cuda")


@needs_onnx
def test_an_export_that_computes_something_else_is_not_timed(monkeypatch):
    import prunebench.metrics.benchmark as bench

    real = bench._onnxruntime_model

    def off_by_a_little(work, input_shape, device):
        runnable, reason, converted = real(work, input_shape, device)

        class Shifted:  # what a wrong graph would give: the outputs moved by 1e-2
            settings = runnable.settings

            def __call__(self, x):
                return runnable(x) + 1e-2

            def eval(self):
                return self

        return Shifted(), reason, converted

    monkeypatch.setattr(bench, "_onnxruntime_model", off_by_a_little)
    model, mask = masked()
    record = benchmark_model(model, DIGITS, mask=mask, device=torch.device("cpu"),
                             batch_sizes=(1,), min_time_s=0.01, warmup=1,
                             modes=("dense", "onnxruntime"))
    assert "onnxruntime" not in record["latency"]
    assert record["modes_skipped"]["onnxruntime"].startswith("outputs differ from PyTorch's by up to 0.01")


@needs_onnx
def test_the_benchmark_stage_times_onnxruntime_and_the_tables_show_it(tmp_path, monkeypatch,
                                                                      capsys):
    """The stage records the mode's latencies (`latency_onnxruntime_b<batch>_ms`) beside the
    dense ones and the paired speed-up over the dense model; the modes table lists it."""
    from prunebench.analysis.aggregate import collect_runs, modes_table, summarise

    params = {"runs_root": "runs", "studies": {"tiny": {
        "data": {"name": "digits"}, "model": {"name": "cnn_digits"},
        "train": {"epochs": 1, "batch_size": 128, "lr": 0.05}, "finetune": {"epochs": 1},
        "methods": {"global_magnitude": {}, "l1_filter": {}}, "sparsities": [0.8],
        "channel_sparsities": [0.5], "recover": ["finetune"], "seeds": [0],
        "benchmark": {"batch_sizes": [1, 16], "min_time_s": 0.01,
                      "modes": ["dense", "sparse_csr", "onnxruntime"]}}}}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    for verb in ("train", "finetune", "benchmark"):
        assert main([verb, "--no-progress", "--threads", "1", "--manifest", f"{verb}.json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    heads = {r["label"]: json.loads((tmp_path / r["path"] / "metrics.json").read_text())
             for r in lines if r["kind"] == "benchmark"}
    assert set(heads) == {"dense", "global_magnitude", "l1_filter"}
    for label, head in heads.items():
        for batch in (1, 16):
            assert head[f"latency_onnxruntime_b{batch}_ms"] > 0, label
            assert head[f"throughput_onnxruntime_b{batch}"] > 0, label
            assert head[f"speedup_vs_dense_b{batch}"] > 0, label
    summary = summarise(collect_runs(tmp_path / f"{v}.json"
                                     for v in ("train", "finetune", "benchmark")))
    table = modes_table(summary, "tiny")
    rows = [line.split("|")[1:4] for line in table.splitlines() if line.startswith("|")][2:]
    modes = [(method.strip(), mode.strip()) for method, _, mode in rows]
    assert ("dense", "onnxruntime") in modes
    assert [m for method, m in modes if method.startswith("l1_filter")] == ["dense", "onnxruntime"]
    dense_modes = [m for method, m in modes if method == "dense"]
    assert dense_modes == ["dense", "onnxruntime"]  # sparse_csr: no zeros in a dense model
    masked_modes = [m for method, m in modes if method.startswith("global_magnitude")]
    assert masked_modes == ["dense", "sparse_csr", "onnxruntime"]


def test_a_benchmark_runs_recorded_source_includes_the_exporter(tmp_path):
    """The onnxruntime mode's numbers depend on `export.py`: an edit to it marks benchmark
    runs stale (`prunebench status`), as an edit to `metrics/` does."""
    from prunebench.sources import display_name, files

    run = Run(tmp_path, "benchmark", {}, {}, stage="benchmark")
    names = {display_name(p) for p in files(run)}
    assert {"prunebench/export.py", "prunebench/metrics/benchmark.py"} <= names
    train = Run(tmp_path, "train", {}, {}, stage="train")
    assert "prunebench/export.py" not in {display_name(p) for p in files(train)}
