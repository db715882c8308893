"""The Python API (`prunebench.prune`, `measure`, `load_run`) on models that are not in the
registry: every registered method through `prune` on a residual CNN with BatchNorm and on an
MLP, the refusals, determinism, and the documented example executed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunebench
from prunebench.errors import ConfigError
from prunebench.io import atomic_torch_save, atomic_write_json
from prunebench.models import get_model
from prunebench.pruning import METHODS, masked_nonzero
from prunebench.runs import Arch

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10


# ---------------------------------------------------------------- models and data of a user


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity: Torch-Pruning couples both ends of the add."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class ResNetLike(nn.Module):
    """Every input dimension divisible by 4, so N:M's requirement holds for all layers."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = Block(8)
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x):
        x = self.down(self.block(self.stem(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 32),
                         nn.ReLU(), nn.Linear(32, CLASSES))


MODELS = {"resnet": (ResNetLike, (4, 8, 8)), "mlp": (mlp, (32,))}
# (method, model) pairs where the method's requirements do not hold: prune refuses them.
REFUSES = {("slimming", "mlp"): "BatchNorm"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def build(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[kind][0]()


def batches(kind: str, n: int = 6, size: int = 16, seed: int = 1) -> list:
    generator = torch.Generator().manual_seed(seed)
    shape = MODELS[kind][1]
    return [(torch.randn(size, *shape, generator=generator),
             torch.randint(0, CLASSES, (size,), generator=generator)) for _ in range(n)]


def state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def target_kwargs(name: str) -> dict:
    method = METHODS.get(name)
    if method.structured:
        return {"channel_sparsity": 0.5}
    return {} if method.fixed_sparsity is not None else {"sparsity": 0.75}


def run(name: str, kind: str, seed: int = 0, **kwargs):
    model = build(kind)
    data = batches(kind)
    return model, prunebench.prune(model, name, data=data, seed=seed,
                                   **{**target_kwargs(name), **kwargs})


# ---------------------------------------------------------------- every registered method


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_prunes_a_model_outside_the_registry(name, kind):
    method = METHODS.get(name)
    original = build(kind)
    before = state(original)
    if method.when == "during_training" or (name, kind) in REFUSES:
        model = build(kind)
        with pytest.raises(ConfigError) as err:
            prunebench.prune(model, name, data=batches(kind), **target_kwargs(name))
        assert "\n" not in str(err.value)
        if method.when == "during_training":
            assert "during training" in str(err.value) and "workflow" in str(err.value)
        else:
            assert REFUSES[(name, kind)] in str(err.value)
        assert same_state(state(model), before)  # a refusal leaves the model as it was
        return

    model, result = run(name, kind)
    assert result.model is model and result.method == name
    x = batches(kind, n=1, size=5, seed=7)[0][0]
    with torch.no_grad():
        out = model.eval()(x)
    assert out.shape == (5, CLASSES) and torch.isfinite(out).all()

    if method.structured:
        assert result.mask is None and result.edits
        assert result.report["params_after"] < result.report["params_before"]
        assert sum(p.numel() for p in model.parameters()) == result.report["params_after"]
        assert result.report["channels_after"] != result.report["channels_before"]
    else:
        assert result.edits == []
        assert result.mask.keys() == {f"{n}.weight" for n, m in model.named_modules()
                                      if isinstance(m, (nn.Conv2d, nn.Linear))}
        fixed = method.fixed_sparsity
        assert result.target == (0.75 if fixed is None else fixed(method.resolve_options({})))
        assert result.report["weight_sparsity"] == pytest.approx(result.target, abs=0.01)
        assert masked_nonzero(model, result.mask) == 0
        # Only the masked weights changed: the survivors keep their values.
        for pname, keep in result.mask.items():
            assert torch.equal(dict(model.named_parameters())[pname], before[pname] * keep)

    # The same seed gives the same result.
    again = run(name, kind)[1]
    if method.structured:
        assert again.edits == result.edits
        assert same_state(state(again.model), state(model))
    else:
        assert again.mask.keys() == result.mask.keys()
        assert all(torch.equal(again.mask[n], result.mask[n]) for n in result.mask)


def test_the_seed_decides_random_choices():
    masks = [run("random", "mlp", seed=s)[1].mask for s in (0, 0, 1)]
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])
    assert not all(torch.equal(masks[0][n], masks[2][n]) for n in masks[0])


def test_snip_with_dropout_and_a_shuffling_loader_repeats_and_leaves_the_global_rng_alone():
    x, y = (torch.cat(t) for t in zip(*batches("mlp")))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8,
                                         shuffle=True)
    rng = torch.get_rng_state()
    masks = [prunebench.prune(build("mlp").train(), "snip", sparsity=0.9, data=loader,
                              seed=3).mask for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])


def test_a_one_shot_iterator_is_read_as_often_as_a_list():
    """Wanda reads the batches once per layer: a generator must not run dry after one."""
    data = batches("resnet")
    from_list = prunebench.prune(build("resnet"), "wanda", sparsity=0.5, data=data).mask
    from_gen = prunebench.prune(build("resnet"), "wanda", sparsity=0.5,
                                data=(b for b in data)).mask
    assert all(torch.equal(from_list[n], from_gen[n]) for n in from_list)


class Counting:
    """An iterable of batches that counts how often it is read."""

    def __init__(self, data):
        self.data, self.reads = data, 0

    def __iter__(self):
        self.reads += 1
        return iter(self.data)


def test_one_pair_is_one_batch_and_val_data_is_what_sensitivity_evaluates():
    x, y = batches("mlp", n=1, size=64)[0]
    result = prunebench.prune(build("mlp"), "snip", sparsity=0.5, data=(x, y))
    assert result.report["weight_sparsity"] == pytest.approx(0.5, abs=1e-3)
    data, val = Counting([(x, y)]), Counting(batches("mlp", n=2, seed=5))
    prunebench.prune(build("mlp"), "sensitivity", sparsity=0.8, data=data, val_data=val)
    sweep = len(METHODS.get("sensitivity").resolve_options({})["sweep"])
    assert val.reads > 3 * sweep  # every layer at every sweep point
    assert data.reads <= 2  # checked and its shape read, never evaluated


def test_scope_excludes_layers_as_in_a_study():
    result = prunebench.prune(build("mlp"), "global_magnitude", sparsity=0.5,
                              scope={"exclude_first": True, "exclude_last": True})
    assert list(result.mask) == ["3.weight"]
    assert result.model[0].weight.count_nonzero() == result.model[0].weight.numel()


def test_lottery_prunes_one_round_with_its_criterion():
    lottery = prunebench.prune(build("resnet"), "lottery", sparsity=0.6).mask
    magnitude = prunebench.prune(build("resnet"), "global_magnitude", sparsity=0.6).mask
    assert all(torch.equal(lottery[n], magnitude[n]) for n in magnitude)


# ---------------------------------------------------------------- refusals, one line each


def refused(match: str, model=None, *args, **kwargs) -> None:
    model = build("resnet") if model is None else model
    before = state(model)
    with pytest.raises(ConfigError, match=match) as err:
        prunebench.prune(model, *args, **kwargs)
    assert "\n" not in str(err.value)
    assert same_state(state(model), before)


def test_bad_input_is_refused_with_one_line_naming_what_is_allowed():
    data = batches("resnet")
    refused(r"unknown method 'magic'; allowed: .*global_magnitude", None, "magic", sparsity=0.5)
    refused(r"prunebench.prune\('snip'\).batches must be", None, "snip", sparsity=0.5,
            data=data, options={"batches": 0})
    refused(r"unknown option prunebench.prune\('snip'\).temperature", None, "snip",
            sparsity=0.5, data=data, options={"temperature": 1.0})
    refused(r"needs calibration data: pass data=", None, "snip", sparsity=0.5)
    refused(r"removes whole channels; give channel_sparsity=, not sparsity=", None, "l1_filter",
            sparsity=0.5)
    refused(r"prunes single weights \(a mask\); give sparsity=, not channel_sparsity=", None,
            "global_magnitude", channel_sparsity=0.5)
    refused(r"needs sparsity=", None, "global_magnitude")
    refused(r"sparsity must be a number in \[0, 1\), got 1.0", None, "random", sparsity=1.0)
    refused(r"fix the sparsity at 0.5", None, "nm", sparsity=0.75)
    refused(r"prunes during training.*workflow.*prunebench.pruning.gradual", None,
            "gradual_magnitude", sparsity=0.5)
    refused(r"prune in 2 rounds", None, "l1_filter", channel_sparsity=0.5,
            options={"rounds": 2}, example_inputs=data[0][0])
    refused(r"pass example_inputs=", None, "l1_filter", channel_sparsity=0.5)
    refused(r"example_inputs must be one input tensor", None, "l1_filter", channel_sparsity=0.5,
            example_inputs=(data[0][0], data[0][0]))
    refused(r"data must yield \(inputs, labels\) pairs", None, "snip", sparsity=0.5,
            data=[data[0][0]])
    refused(r"data must be a DataLoader", None, "snip", sparsity=0.5, data=data[0][0])
    refused(r"scope must be", None, "random", sparsity=0.5, scope={"first": True})
    refused(r"no Conv2d or Linear weight", nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)),
            "random", sparsity=0.5)
    with pytest.raises(ConfigError, match="must be a torch.nn.Module"):
        prunebench.prune("resnet20", "random", sparsity=0.5)


def test_a_model_structured_pruning_cannot_handle_is_refused_and_left_as_it_was():
    class Normed(nn.Module):  # a LayerNorm inside a channel group: no score, no surgery
        def __init__(self):
            super().__init__()
            self.fc1, self.norm, self.fc2 = nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4)

        def forward(self, x):
            return self.fc2(self.norm(self.fc1(x)))

    x = torch.randn(2, 8)
    for name in ("l1_filter", "neuron_magnitude", "regression"):
        refused(r"cannot prune Normed: .*LayerNorm", Normed(), name, channel_sparsity=0.5,
                data=[(x, torch.tensor([0, 1]))])
    no_classifier = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Conv2d(8, CLASSES, 1))
    refused(r"cannot prune Sequential: .*no Linear classifier", no_classifier, "l1_filter",
            channel_sparsity=0.5, example_inputs=torch.randn(1, 4, 8, 8))


def test_nm_refuses_a_model_whose_input_dimensions_do_not_divide_by_m():
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))
    refused(r"no prunable layer has an input dimension divisible by m=4", model, "nm")


# ---------------------------------------------------------------- measure and load_run


def test_measure_returns_the_benchmark_record_of_a_pruned_model():
    model = build("mlp")
    result = prunebench.prune(model, "global_magnitude", sparsity=0.75)
    x = batches("mlp", n=1)[0][0]
    record = prunebench.measure(model, x, min_time_s=0.0, modes=("dense", "sparse_csr"))
    assert record["input_shape"] == [32]
    assert record["params_total"] == sum(p.numel() for p in model.parameters())
    assert record["weights_nonzero"] == result.report["prunable_nonzero"]
    assert record["latency"]["dense"]["1"]["latency_median_ms"] > 0
    assert "sparse_csr" in record["latency"]
    # A mask given to measure is applied to its copy only.
    dense = build("mlp")
    masked = prunebench.measure(dense, (x,), mask=result.mask, min_time_s=0.0)
    assert masked["weights_nonzero"] == record["weights_nonzero"]
    assert dense[0].weight.count_nonzero() == dense[0].weight.numel()
    with pytest.raises(ConfigError, match="example_inputs must be one input tensor"):
        prunebench.measure(model, [x, x])
    with pytest.raises(ConfigError, match="unknown modes"):
        prunebench.measure(model, x, modes=("fast",))


def test_load_run_rebuilds_a_finished_runs_model(tmp_path):
    """A run directory as the executor finishes it: arch.json with the channel edits,
    model.pt, metrics.json (written last)."""
    shape = (1, 8, 8)
    torch.manual_seed(0)
    model = get_model("cnn_digits_bn", CLASSES, shape)
    result = prunebench.prune(model, "l1_filter", channel_sparsity=0.5,
                              example_inputs=torch.zeros(1, *shape))
    run_dir = tmp_path / "prune" / "abc"
    run_dir.mkdir(parents=True)
    atomic_write_json(run_dir / "arch.json",
                      Arch("cnn_digits_bn", CLASSES, shape, edits=tuple(result.edits)).to_json())
    atomic_torch_save(model.state_dict(), run_dir / "model.pt")
    with pytest.raises(ConfigError, match=r"not a finished run directory .*has no metrics.json"):
        prunebench.load_run(run_dir)
    atomic_write_json(run_dir / "metrics.json", {})
    loaded = prunebench.load_run(str(run_dir))
    assert not loaded.training and same_state(state(loaded), state(model))
    x = torch.randn(3, *shape)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    with pytest.raises(ConfigError, match="does not exist"):
        prunebench.load_run(tmp_path / "nowhere")


def test_import_prunebench_stays_light_and_the_api_loads_on_use():
    code = ("import sys, prunebench; light = 'torch' not in sys.modules; "
            "f = prunebench.prune; print(light, f.__module__, 'prune' in dir(prunebench))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["True", "prunebench.api", "True"]
    with pytest.raises(AttributeError):
        prunebench.no_such_name  # noqa: B018


# ---------------------------------------------------------------- the documented example

EXAMPLE_PAGE = "docs/bring-your-own.md"  # where the Python API is documented


def readme_example() -> str | None:
    """The first ```python block in the section of EXAMPLE_PAGE whose heading mentions
    "Python API" (lines inside code blocks are never headings)."""
    in_section, fence, code = False, None, []
    for line in (ROOT / EXAMPLE_PAGE).read_text().splitlines():
        if fence is not None:
            if line.startswith("```"):
                if fence == "python" and in_section:
                    return "\n".join(code) + "\n"
                fence = None
            elif fence == "python":
                code.append(line)
        elif line.startswith("```"):
            fence, code = line[3:].strip(), []
        elif line.startswith("#"):
            in_section = "Python API" in line
    return None


def test_the_documented_python_api_example_runs(tmp_path, monkeypatch, capsys):
    code = readme_example()
    assert code is not None, f"{EXAMPLE_PAGE} has no ```python block under a heading " \
                             "containing 'Python API'"
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{EXAMPLE_PAGE} (Python API)", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip()
