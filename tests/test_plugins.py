"""Bring your own model, method and checkpoint (issue #22): plugins named in the params file
or installed as entry points, `model.kwargs`, `model.factory`, `model.checkpoint`. Every
check runs the real CLI in a project directory the test makes (plugins are imported once per
process, as in every job), so what a plugin registers, and the run names it gives, are those
a user's processes see."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

BIN = Path(sys.executable).parent

PLUGIN = '''
from torch import nn
from prunebench.models import register_model
from prunebench.pruning import register_method, global_topk_mask
from prunebench.pruning.magnitude import magnitude_scores


@register_model("tiny_mlp")
def tiny_mlp(num_classes, input_shape, width=16):
    n = 1
    for d in input_shape:
        n *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(n, width), nn.ReLU(), nn.Linear(width, num_classes))


@register_model("ln_net")
def ln_net(num_classes, input_shape):
    n = 1
    for d in input_shape:
        n *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(n, 16), nn.LayerNorm(16), nn.ReLU(),
                         nn.Linear(16, num_classes))


@register_method("squared_magnitude", when="trained")
def squared_magnitude(ctx, sparsity):
    scores = {k: v ** 2 for k, v in magnitude_scores(ctx).items()}
    return global_topk_mask(scores, sparsity, ctx.mask)
'''

FACTORY = '''
from torch import nn


def net(num_classes, width=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_classes))
'''


def study(**over) -> dict:
    s = {
        "data": {"name": "digits", "val_size": 0.1},
        "model": {"name": "tiny_mlp", "kwargs": {"width": 12}},
        "train": {"optimizer": "sgd", "lr": 0.05, "epochs": 1, "batch_size": 64},
        "finetune": {"epochs": 1, "lr": 0.01},
        "methods": {"squared_magnitude": {}, "global_magnitude": {}},
        "sparsities": [0.5],
        "recover": ["finetune"],
        "benchmark": {"batch_sizes": [1], "min_time_s": 0.01},
        "seeds": [0],
    }
    s.update(over)
    return s


def project(tmp_path: Path, params: dict, plugin: str = PLUGIN) -> Path:
    (tmp_path / "plugins").mkdir(parents=True, exist_ok=True)
    (tmp_path / "plugins" / "mine.py").write_text(plugin)
    (tmp_path / "mymodels.py").write_text(FACTORY)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


def cli(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "prunebench"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


def plan(cwd: Path) -> dict[tuple[str, str], list[dict]]:
    out = cli(cwd, "plan")
    assert out.returncode == 0, out.stderr
    jobs: dict[tuple[str, str], list[dict]] = {}
    for job in map(json.loads, out.stdout.splitlines()):
        jobs.setdefault((job["stage"], job["label"]), []).append(job)
    return jobs


PARSE_ALL = """
import json, sys
from prunebench.errors import ConfigError
from prunebench.study import validate_params
out = []
for raw in json.loads(sys.stdin.read()):
    try:
        validate_params(raw)
        out.append(None)
    except ConfigError as err:
        out.append(str(err))
print(json.dumps(out))
"""


def parse_errors(cwd: Path, raws: list[dict]) -> list[str | None]:
    """What parsing each params mapping says (None: accepted), in one process from `cwd`,
    as `prunebench plan` would parse it (each refusal is the error's one line)."""
    out = subprocess.run([sys.executable, "-c", PARSE_ALL], cwd=cwd, input=json.dumps(raws),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def params(**study_over) -> dict:
    return {"plugins": ["plugins/mine.py"], "studies": {"s": study(**study_over)}}


def test_a_plugin_registers_a_model_and_a_method_and_names_their_runs(tmp_path):
    work = project(tmp_path, params())
    before = plan(work)
    assert ("prune", "squared_magnitude") in before and ("train", "dense") in before
    # Editing the plugin reruns what uses what it registers: the model is the plugin's, so
    # every run changes name; a comment is an edit too (the source is the identity).
    (work / "plugins" / "mine.py").write_text(PLUGIN + "\n# edited\n")
    after = plan(work)
    for key, jobs in before.items():
        assert [j["hash"] for j in jobs] != [j["hash"] for j in after[key]], key


def test_a_plugin_method_on_a_builtin_model_renames_only_its_own_runs(tmp_path):
    work = project(tmp_path, params(model={"name": "mlp_digits"}))
    before = plan(work)
    (work / "plugins" / "mine.py").write_text(PLUGIN + "\n# edited\n")
    after = plan(work)
    for key, jobs in before.items():
        changed = [j["hash"] for j in jobs] != [j["hash"] for j in after[key]]
        # The plugin method's runs (and their benchmarks) change; the rest keep their names.
        assert changed == (key[1] == "squared_magnitude"), key


def test_plugin_runs_end_to_end_and_the_model_takes_its_kwargs(tmp_path):
    work = project(tmp_path, params())
    out = cli(work, "finetune", "--method", "squared_magnitude", "--no-progress")
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout.splitlines()[-1])
    config = json.loads((work / run["path"] / "config.json").read_text())
    assert config["config"]["parent"]["plugin"]["plugins/mine.py"] == hashlib.sha256(
        b"mine.py\0" + PLUGIN.encode() + b"\0").hexdigest()
    arch = json.loads((work / run["path"] / "arch.json").read_text())
    assert arch["model"] == "tiny_mlp" and arch["kwargs"] == {"width": 12}
    state = torch.load(work / run["path"] / "model.pt", weights_only=True)
    assert state["1.weight"].shape == (12, 64)  # width 12, 8x8 digits flattened
    assert (state["1.weight"] == 0).float().mean() > 0.4  # the plugin's method pruned it


REFUSED_PLUGINS = [
    (["plugins/missing.py"], "plugins[0]: plugin file 'plugins/missing.py' not found"),
    (["no_such_module_xyz"], "plugins[0]: cannot import plugin 'no_such_module_xyz'"),
    (["plugins/mine.py", "plugins/broken.py"],
     "plugins[1]: plugin 'plugins/broken.py' failed on import: ZeroDivisionError"),
    ("plugins/mine.py", "plugins must be a list"),
    ([{"file": "plugins/mine.py"}], "plugins[0] must be a module name or a .py file"),
]


def test_a_missing_or_failing_plugin_is_refused_in_one_line(tmp_path):
    work = project(tmp_path, {**params(), "plugins": REFUSED_PLUGINS[2][0]})
    (work / "plugins" / "broken.py").write_text("x = 1 / 0\n")
    for args in (["plan"], ["train", "--no-progress"]):  # the CLI: exit 2, one line, no files
        out = cli(work, *args)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and REFUSED_PLUGINS[2][1] in lines[0], out.stderr
    assert not (work / "results").exists()
    said = parse_errors(work, [{**params(), "plugins": p} for p, _ in REFUSED_PLUGINS])
    for (plugins, message), error in zip(REFUSED_PLUGINS, said):
        assert error is not None and message in error and "\n" not in error, (plugins, error)


def test_a_study_names_its_own_plugins(tmp_path):
    raw = {"studies": {"s": {**study(), "plugins": ["plugins/mine.py"]}}}
    out = cli(project(tmp_path, raw), "plan")
    assert out.returncode == 0, out.stderr


def test_an_installed_package_registers_through_its_entry_point(tmp_path):
    """A distribution on the path that declares `prunebench.plugins` is imported by every
    process, with no `plugins:` key at all."""
    site = tmp_path / "site"
    (site / "byo_pkg").mkdir(parents=True)
    (site / "byo_pkg" / "__init__.py").write_text(PLUGIN)
    info = site / "byo_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: byo_pkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[prunebench.plugins]\nbyo = byo_pkg\n")
    work = project(tmp_path / "work", {"studies": {"s": study()}})
    assert cli(work, "plan").returncode == 2  # tiny_mlp is nobody's without the package
    out = cli(work, "plan", env={"PYTHONPATH": str(site)})
    assert out.returncode == 0, out.stderr


def test_model_kwargs_a_factory_and_their_errors(tmp_path):
    work = project(tmp_path, params(model={"factory": "mymodels:net", "kwargs": {"width": 5}}))
    out = cli(work, "train", "--no-progress")
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout.splitlines()[-1])
    assert run["model"] == "mymodels:net"
    config = json.loads((work / run["path"] / "config.json").read_text())["config"]
    source = (work / "mymodels.py").read_bytes()
    assert config["code"]["factory"]["sha256"] == hashlib.sha256(
        b"mymodels.py\0" + source + b"\0").hexdigest()
    assert torch.load(work / run["path"] / "model.pt", weights_only=True)["1.weight"].shape == (5, 64)
    refused = [
        ({"name": "tiny_mlp", "kwargs": {"depth": 3}}, "studies.s.model.kwargs: got an unexpected"),
        ({"factory": "mymodels:nope"}, "studies.s.model.factory 'mymodels:nope': module"),
        ({"factory": "timm_is_not_here:create_model"}, "cannot import 'timm_is_not_here'"),
        ({"factory": "mymodels.net"}, "must look like 'package.module:function'"),
        ({"name": "tiny_mlp", "factory": "mymodels:net"}, "give name (a registered model) or"),
    ]
    said = parse_errors(work, [params(model=model) for model, _ in refused])
    for (model, message), error in zip(refused, said):
        assert error is not None and message in error, (model, error)


def test_a_pretrained_checkpoint_is_verified_loaded_and_names_the_dense_run(tmp_path):
    from prunebench.models import get_model

    torch.manual_seed(123)
    model = get_model("mlp_digits", 10, (1, 8, 8))
    (tmp_path / "weights").mkdir()
    path = tmp_path / "weights" / "pre.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    keep = {"optimizer": "sgd", "lr": 0.05, "epochs": 0, "batch_size": 64}
    ckpt = {"name": "mlp_digits", "checkpoint": {"path": "weights/pre.pt", "sha256": sha}}
    work = project(tmp_path, params(model=ckpt, train=keep))
    out = cli(work, "train", "--no-progress")
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout.splitlines()[-1])
    loaded = torch.load(work / run["path"] / "model.pt", weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    metrics = json.loads((work / run["path"] / "metrics.json").read_text())
    assert metrics["pretrained"] == sha and metrics["top1"] > 0  # the dense row says so
    config = json.loads((work / run["path"] / "config.json").read_text())["config"]
    assert config["model"]["checkpoint"] == {"sha256": sha}  # the path does not name runs
    # Another file under the same name: refused before anything is unpickled.
    torch.save(get_model("mlp_digits", 10, (1, 8, 8)).state_dict(), path)
    out = cli(work, "train", "--no-progress", "--seed", "1")
    assert out.returncode == 2 and f"model.checkpoint.sha256 is {sha}" in out.stderr
    # epochs 0 needs a checkpoint.
    (work / "params.yaml").write_text(yaml.safe_dump(params(train=keep)))
    out = cli(work, "plan")
    assert out.returncode == 2 and "studies.s.train.epochs" in out.stderr


@pytest.mark.parametrize("model, method, reason", [
    ("tiny_mlp", "slimming", "ranks channels by their BatchNorm scales, and it has none"),
    ("ln_net", "l1_filter", "its channel graph cannot be built"),
])
def test_a_method_that_cannot_prune_the_users_model_says_so_at_parse_time(
        tmp_path, model, method, reason):
    raw = params(model={"name": model}, methods={"global_magnitude": {}, method: {}})
    out = cli(project(tmp_path, raw), "plan")
    assert out.returncode == 2, out.stderr
    line = out.stderr.strip().splitlines()
    assert len(line) == 1 and f"method {method!r} (key studies.s.methods.{method}) cannot " \
        f"prune model {model!r}" in line[0] and reason in line[0], out.stderr


def test_a_sequence_dataset_of_rank_one_goes_through_every_stage(tmp_path):
    """Inputs of any rank: NumPy arrays of 12-step sequences, a plugin's model, a method,
    fine-tuning and the benchmark (MACs, latency) on (12,)-shaped examples."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12)).astype("float32")
    y = (x[:, :6].sum(1) > x[:, 6:].sum(1)).astype("int64")
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "seq.npz", x_train=x[:240], y_train=y[:240], x_test=x[240:],
             y_test=y[240:])
    plugin = PLUGIN + '''
from prunebench.data import numpy_arrays, register_dataset

register_dataset(numpy_arrays("seq", "data/seq.npz"))
'''
    raw = params(data={"name": "seq", "val_size": 0.1}, methods={"squared_magnitude": {}},
                 train={"optimizer": "adam", "lr": 0.01, "epochs": 30, "batch_size": 32},
                 finetune={"epochs": 5, "lr": 0.003})
    work = project(tmp_path, raw, plugin=plugin)
    out = cli(work, "benchmark", "--method", "squared_magnitude", "--no-progress")
    assert out.returncode == 0, out.stderr[-3000:]
    run = json.loads(out.stdout.splitlines()[-1])
    metrics = json.loads((work / run["path"] / "metrics.json").read_text())
    assert metrics["top1"] > 0.7  # a learnable rule: which half sums higher
    assert metrics["macs_dense"] == 12 * 12 + 12 * 2 and metrics["latency_dense_b1_ms"] > 0
    arch = json.loads((work / run["of"] / "arch.json").read_text())
    assert arch["input_shape"] == [12]


def test_a_plugin_imported_first_is_credited_with_its_own_entries_only(tmp_path):
    """In a process whose first prunebench import is the plugin's, the package's own
    methods, models and datasets still have no plugin origin (their runs keep their
    names), and a plugin that fails half-way leaves nothing registered."""
    project(tmp_path, params())
    (tmp_path / "plugins" / "half.py").write_text(
        "from prunebench.models import register_model\n"
        "register_model('half_model')(lambda n, s: None)\n"
        "raise RuntimeError('broken after one registration')\n")
    script = """
import json
from prunebench import plugins
plugins.load("plugins/mine.py", "plugins[0]")
from prunebench.data import DATASETS
from prunebench.models import MODELS
from prunebench.pruning import METHODS
from prunebench.errors import ConfigError
try:
    plugins.load("plugins/half.py", "plugins[1]")
except ConfigError as err:
    failed = str(err)
print(json.dumps({"snip": METHODS.origin("snip") is None, "digits": DATASETS.origin("digits") is None,
                  "mlp": MODELS.origin("mlp_digits") is None,
                  "mine": METHODS.origin("squared_magnitude").name, "failed": failed,
                  "half": "half_model" in MODELS}))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["snip"] and result["digits"] and result["mlp"]
    assert result["mine"] == "plugins/mine.py"
    assert "broken after one registration" in result["failed"] and not result["half"]


def test_a_module_the_plugin_uses_is_part_of_its_identity(tmp_path):
    """The plugin imports a helper module of the project: editing the helper renames the
    runs too (the plugin's file alone would not change)."""
    helper = "def width():\n    return 12\n"
    plugin = "from helpers import width\n" + PLUGIN
    work = project(tmp_path, params(), plugin=plugin)
    (work / "helpers.py").write_text(helper)
    before = plan(work)
    (work / "helpers.py").write_text(helper + "# edited\n")
    after = plan(work)
    assert all([j["hash"] for j in jobs] != [j["hash"] for j in after[key]]
               for key, jobs in before.items())



def test_evaluate_and_load_run_import_the_plugins_a_run_was_made_with(tmp_path):
    work = project(tmp_path, params())
    out = cli(work, "prune", "--method", "squared_magnitude", "--no-progress")
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout.splitlines()[-1])
    assert json.loads((work / run["path"] / "config.json").read_text())["plugins"] == [
        "plugins/mine.py"]
    ev = cli(work, "evaluate", run["path"])  # a fresh process: nothing registered tiny_mlp
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["top1"] == pytest.approx(run["top1"])
    script = ("import sys, prunebench; m = prunebench.load_run(sys.argv[1]); "
              "print(type(m).__name__, m[1].out_features)")
    out = subprocess.run([sys.executable, "-c", script, run["path"]], cwd=work,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["Sequential", "12"], out.stderr


@pytest.mark.parametrize("model, message", [
    ({"factory": "mymodels:net", "kwargs": {"width": "8"}}, "cannot be built or run"),
    ({"factory": "mymodels:wide"}, "gives outputs of shape (2, 1000)"),
])
def test_a_user_model_that_cannot_run_or_has_the_wrong_head_is_refused(tmp_path, model,
                                                                       message):
    work = project(tmp_path, params(model=model))
    (work / "mymodels.py").write_text(FACTORY + '''

def wide(*, weights=None, **kwargs):  # torchvision's style: num_classes only by keyword
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 1000))
''')
    out = cli(work, "plan")
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_file_dataset_described_in_the_params_file(tmp_path):
    """`data: {name, format, path, options}`: an image folder with given statistics, no
    plugin; a bad option is one line naming the key."""
    from PIL import Image

    for split, count in (("train", 12), ("test", 4)):
        for k, cls in enumerate(("dark", "light")):
            folder = tmp_path / "data" / "tiles" / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("L", (8, 8), color=40 + 160 * k + i).save(folder / f"{i}.png")
    data = {"name": "tiles", "format": "image_folder", "path": "data/tiles", "val_size": 0.25,
            "options": {"mean": 0.5, "std": 0.25}}
    raw = {"studies": {"s": study(data=data, model={"name": "mlp_digits"},
                                  methods={"global_magnitude": {}})}}
    work = project(tmp_path, raw)
    out = cli(work, "train", "--no-progress")
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout.splitlines()[-1])
    assert run["dataset"] == "tiles"
    config = json.loads((work / run["path"] / "config.json").read_text())["config"]
    assert "path" not in config["data"] and len(config["code"]["data"]) == 16  # fingerprint
    raw["studies"]["s"]["data"]["options"] = {"colour": "RGB"}
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    out = cli(work, "plan")
    assert out.returncode == 2 and "studies.s.data" in out.stderr and "colour" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
