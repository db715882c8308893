"""Bring your own model, method and checkpoint (issue #22): plugins named in the params file
or installed as entry points, `model.kwargs`, `model.factory`, `model.checkpoint`. The checks
run the real CLI in a project directory the test makes, each run or plan a fresh process
(plugins are imported once per process, as in every job), so what a plugin registers, and the
run names it gives, are those a user's processes see. Refusals at parse time are planned by
the CLI's own `main` in one process (`refusals`), the subprocess path checked once."""

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

WIDE = '''

def wide(*, weights=None, **kwargs):  # torchvision's style: num_classes only by keyword
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 1000))
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


def plan(cwd: Path) -> dict[tuple[str, str, str], list[dict]]:
    """The jobs `prunebench plan` lists, by (study, stage, label)."""
    out = cli(cwd, "plan")
    assert out.returncode == 0, out.stderr
    jobs: dict[tuple[str, str, str], list[dict]] = {}
    for job in map(json.loads, out.stdout.splitlines()):
        jobs.setdefault((job["study"], job["stage"], job["label"]), []).append(job)
    return jobs


def params(**study_over) -> dict:
    return {"plugins": ["plugins/mine.py"], "studies": {"s": study(**study_over)}}


def make_tiles(root: Path) -> None:
    """An image folder of 8x8 grey tiles, two classes: data/tiles/{train,test}/{dark,light}."""
    from PIL import Image

    for split, count in (("train", 12), ("test", 4)):
        for k, cls in enumerate(("dark", "light")):
            folder = root / "data" / "tiles" / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("L", (8, 8), color=40 + 160 * k + i).save(folder / f"{i}.png")


TILES = {"name": "tiles", "format": "image_folder", "path": "data/tiles", "val_size": 0.25,
         "options": {"mean": 0.5, "std": 0.25}}

# ---------------------------------------------------------------- renames: one project

HELPER = "def width():\n    return 12\n"
HELPED_PLUGIN = "from helpers import width\n" + PLUGIN


@pytest.fixture(scope="module")
def renames(tmp_path_factory) -> list[dict]:
    """One project planned three times, each by a fresh `prunebench plan`: as written, after
    a comment is added to the plugin, then after one is added to a project module that the
    plugin imports (`helpers.py`). Its two studies name the plugin themselves (there is no
    top-level `plugins:`): `s` runs the plugin's model, `b` a built-in one; both prune with
    the plugin's method and a built-in one."""
    work = tmp_path_factory.mktemp("renames")
    own = {"plugins": ["plugins/mine.py"]}
    raw = {"studies": {"s": {**study(), **own},
                       "b": {**study(model={"name": "mlp_digits"}), **own}}}
    project(work, raw, plugin=HELPED_PLUGIN)
    (work / "helpers.py").write_text(HELPER)
    plans = [plan(work)]
    (work / "plugins" / "mine.py").write_text(HELPED_PLUGIN + "\n# edited\n")
    plans.append(plan(work))
    (work / "helpers.py").write_text(HELPER + "# edited\n")
    plans.append(plan(work))
    for later in plans[1:]:
        assert set(later) == set(plans[0])
    return plans


def renamed(before: dict, after: dict, study_name: str) -> dict[tuple[str, str], bool]:
    """Per (stage, label) of one study: whether its jobs' hashes changed."""
    return {key[1:]: [j["hash"] for j in jobs] != [j["hash"] for j in after[key]]
            for key, jobs in before.items() if key[0] == study_name}


def test_a_study_names_its_own_plugins(renames):
    before = renames[0]
    for name in ("s", "b"):  # planned, with the plugin's model and method
        assert (name, "prune", "squared_magnitude") in before and (name, "train", "dense") in before


def test_a_plugin_registers_a_model_and_a_method_and_names_their_runs(renames):
    # Editing the plugin reruns what uses what it registers: the model is the plugin's, so
    # every run changes name; a comment is an edit too (the source is the identity).
    changed = renamed(renames[0], renames[1], "s")
    assert ("prune", "squared_magnitude") in changed and ("train", "dense") in changed
    assert all(changed.values()), changed


def test_a_plugin_method_on_a_builtin_model_renames_only_its_own_runs(renames):
    changed = renamed(renames[0], renames[1], "b")
    # The plugin method's runs (and their benchmarks) change; the rest keep their names.
    assert changed and all(c == (key[1] == "squared_magnitude") for key, c in changed.items()), \
        changed


def test_a_module_the_plugin_uses_is_part_of_its_identity(renames):
    """The plugin imports a helper module of the project: editing the helper renames the
    runs too (the plugin's file alone would not change)."""
    changed = renamed(renames[1], renames[2], "s")
    assert changed and all(changed.values()), changed
    changed = renamed(renames[1], renames[2], "b")
    assert all(c == (key[1] == "squared_magnitude") for key, c in changed.items()), changed


# ---------------------------------------------------------- refusals: one process, many plans

PLAN_EACH = """
import contextlib, io, json, sys, traceback
from prunebench.cli import main


class Current(io.TextIOBase):
    # main() binds its logging handler to sys.stderr once: send it to each plan's buffer.
    buf = io.StringIO()

    def write(self, text):
        return self.buf.write(text)


err = Current()
said = []
for path in sys.argv[1:]:
    out, err.buf = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["plan", "--params", path])
        except SystemExit as exit:
            code = exit.code
        except Exception:  # what the console command would die of: a traceback, status 1
            traceback.print_exc()
            code = 1
    said.append({"code": code, "stdout": out.getvalue(), "stderr": err.buf.getvalue()})
print(json.dumps(said))
"""

REFUSED_PLUGINS = [
    (["plugins/missing.py"], "plugins[0]: plugin file 'plugins/missing.py' not found"),
    (["no_such_module_xyz"], "plugins[0]: cannot import plugin 'no_such_module_xyz'"),
    (["plugins/mine.py", "plugins/broken.py"],
     "plugins[1]: plugin 'plugins/broken.py' failed on import: ZeroDivisionError"),
    ("plugins/mine.py", "plugins must be a list"),
    ([{"file": "plugins/mine.py"}], "plugins[0] must be a module name or a .py file"),
]
REFUSED_MODELS = [
    ({"name": "tiny_mlp", "kwargs": {"depth": 3}}, "studies.s.model.kwargs: got an unexpected"),
    ({"factory": "mymodels:nope"}, "studies.s.model.factory 'mymodels:nope': module"),
    ({"factory": "timm_is_not_here:create_model"}, "cannot import 'timm_is_not_here'"),
    ({"factory": "mymodels.net"}, "must look like 'package.module:function'"),
    ({"name": "tiny_mlp", "factory": "mymodels:net"}, "give name (a registered model) or"),
]
UNPRUNABLE = [
    ("tiny_mlp", "slimming", "ranks channels by their BatchNorm scales, and it has none"),
    ("ln_net", "l1_filter", "its channel graph cannot be built"),
]
UNRUNNABLE = [
    ({"factory": "mymodels:net", "kwargs": {"width": "8"}}, "cannot be built or run"),
    ({"factory": "mymodels:wide"}, "gives outputs of shape (2, 1000)"),
]
KEEP = {"optimizer": "sgd", "lr": 0.05, "epochs": 0, "batch_size": 64}  # pretrained, kept


def refused_params() -> dict[str, dict]:
    """Params files that `prunebench plan` must refuse, by name, in the order planned."""
    cases = {
        # First, while no plugin is imported: tiny_mlp is nobody's without one.
        "no plugin": {"studies": {"s": study()}},
        **{f"plugins {i}": {**params(), "plugins": p} for i, (p, _) in enumerate(REFUSED_PLUGINS)},
        **{f"model {i}": params(model=m) for i, (m, _) in enumerate(REFUSED_MODELS)},
        **{f"unprunable {model}": params(model={"name": model},
                                         methods={"global_magnitude": {}, method: {}})
           for model, method, _ in UNPRUNABLE},
        **{f"unrunnable {i}": params(model=m) for i, (m, _) in enumerate(UNRUNNABLE)},
        "epochs 0": params(train=KEEP),  # with no checkpoint to keep
    }
    data = {**TILES, "options": {"colour": "RGB"}}
    cases["data option"] = {"studies": {"s": study(data=data, model={"name": "mlp_digits"},
                                                   methods={"global_magnitude": {}})}}
    return cases


@pytest.fixture(scope="module")
def refusals(tmp_path_factory) -> dict[str, dict]:
    """What `prunebench plan` says of each of `refused_params()` (exit status, stdout,
    stderr), planned by the CLI's `main` in one fresh process, from one project: the plugin
    and a broken one, the factory module with a model of the wrong width, an image folder."""
    work = project(tmp_path_factory.mktemp("refusals"), params())
    (work / "plugins" / "broken.py").write_text("x = 1 / 0\n")
    (work / "mymodels.py").write_text(FACTORY + WIDE)
    make_tiles(work)
    cases = refused_params()
    files = []
    for i, raw in enumerate(cases.values()):
        files.append(f"params-{i}.yaml")
        (work / files[-1]).write_text(yaml.safe_dump(raw, sort_keys=False))
    out = subprocess.run([sys.executable, "-c", PLAN_EACH, *files], cwd=work,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return dict(zip(cases, json.loads(out.stdout.splitlines()[-1])))


def one_line(said: dict, *parts: str) -> str:
    """The refusal's line, checked: exit status 2, nothing planned, one line naming `parts`."""
    lines = said["stderr"].strip().splitlines()
    assert said["code"] == 2 and not said["stdout"], said
    assert len(lines) == 1 and all(p in lines[0] for p in parts), said["stderr"]
    return lines[0]


def test_a_missing_or_failing_plugin_is_refused_in_one_line(tmp_path, refusals):
    work = project(tmp_path, {**params(), "plugins": REFUSED_PLUGINS[2][0]})
    (work / "plugins" / "broken.py").write_text("x = 1 / 0\n")
    out = cli(work, "train", "--no-progress")  # the console command: exit 2, one line, no files
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and REFUSED_PLUGINS[2][1] in lines[0], out.stderr
    assert not (work / "results").exists()
    for i, (_, message) in enumerate(REFUSED_PLUGINS):
        one_line(refusals[f"plugins {i}"], message)


def test_an_installed_package_registers_through_its_entry_point(tmp_path, refusals):
    """A distribution on the path that declares `prunebench.plugins` is imported by every
    process, with no `plugins:` key at all."""
    site = tmp_path / "site"
    (site / "byo_pkg").mkdir(parents=True)
    (site / "byo_pkg" / "__init__.py").write_text(PLUGIN)
    info = site / "byo_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: byo_pkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[prunebench.plugins]\nbyo = byo_pkg\n")
    work = project(tmp_path / "work", refused_params()["no plugin"])
    one_line(refusals["no plugin"], "tiny_mlp")  # nobody's without the package
    out = cli(work, "plan", env={"PYTHONPATH": str(site)})
    assert out.returncode == 0, out.stderr


# ------------------------------------------------------------------ runs: one process each

@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> tuple[Path, dict]:
    """`prunebench finetune` of the plugin's method on the plugin's model (dense training,
    pruning, fine-tuning): the project and the fine-tuned run's summary line."""
    work = project(tmp_path_factory.mktemp("finetuned"), params())
    out = cli(work, "finetune", "--method", "squared_magnitude", "--no-progress")
    assert out.returncode == 0, out.stderr
    return work, json.loads(out.stdout.splitlines()[-1])


def test_plugin_runs_end_to_end_and_the_model_takes_its_kwargs(finetuned):
    work, run = finetuned
    config = json.loads((work / run["path"] / "config.json").read_text())
    assert config["config"]["parent"]["plugin"]["plugins/mine.py"] == hashlib.sha256(
        b"mine.py\0" + PLUGIN.encode() + b"\0").hexdigest()
    arch = json.loads((work / run["path"] / "arch.json").read_text())
    assert arch["model"] == "tiny_mlp" and arch["kwargs"] == {"width": 12}
    state = torch.load(work / run["path"] / "model.pt", weights_only=True)
    assert state["1.weight"].shape == (12, 64)  # width 12, 8x8 digits flattened
    assert (state["1.weight"] == 0).float().mean() > 0.4  # the plugin's method pruned it


def test_evaluate_and_load_run_import_the_plugins_a_run_was_made_with(finetuned):
    work, run = finetuned
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


def test_model_kwargs_a_factory_and_their_errors(tmp_path, refusals):
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
    for i, (_, message) in enumerate(REFUSED_MODELS):
        one_line(refusals[f"model {i}"], message)


def test_a_pretrained_checkpoint_is_verified_loaded_and_names_the_dense_run(tmp_path,
                                                                           refusals):
    from prunebench.models import get_model

    torch.manual_seed(123)
    model = get_model("mlp_digits", 10, (1, 8, 8))
    (tmp_path / "weights").mkdir()
    path = tmp_path / "weights" / "pre.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    ckpt = {"name": "mlp_digits", "checkpoint": {"path": "weights/pre.pt", "sha256": sha}}
    work = project(tmp_path, params(model=ckpt, train=KEEP))
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
    one_line(refusals["epochs 0"], "studies.s.train.epochs")  # epochs 0 needs a checkpoint


@pytest.mark.parametrize("model, method, reason", UNPRUNABLE)
def test_a_method_that_cannot_prune_the_users_model_says_so_at_parse_time(
        refusals, model, method, reason):
    one_line(refusals[f"unprunable {model}"], reason,
             f"method {method!r} (key studies.s.methods.{method}) cannot prune model {model!r}")


@pytest.mark.parametrize("case", range(len(UNRUNNABLE)))
def test_a_user_model_that_cannot_run_or_has_the_wrong_head_is_refused(refusals, case):
    one_line(refusals[f"unrunnable {case}"], UNRUNNABLE[case][1])


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
    plugin = PLUGIN + """
from prunebench.data import numpy_arrays, register_dataset

register_dataset(numpy_arrays("seq", "data/seq.npz"))
"""
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


def test_a_file_dataset_described_in_the_params_file(tmp_path, refusals):
    """`data: {name, format, path, options}`: an image folder with given statistics, no
    plugin; a bad option is one line naming the key."""
    make_tiles(tmp_path)
    raw = {"studies": {"s": study(data=TILES, model={"name": "mlp_digits"},
                                  methods={"global_magnitude": {}})}}
    work = project(tmp_path, raw)
    out = cli(work, "train", "--no-progress")
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout.splitlines()[-1])
    assert run["dataset"] == "tiles"
    config = json.loads((work / run["path"] / "config.json").read_text())["config"]
    assert "path" not in config["data"] and len(config["code"]["data"]) == 16  # fingerprint
    one_line(refusals["data option"], "studies.s.data", "colour")
