"""Malformed params files, each through both entry points: `prunebench plan --params FILE`
and `snakemake -n` in a copy of the workflow. Every one must exit non-zero with one line
naming the key, no traceback, and leave the directory exactly as it was.

Each variant gets its own directory (a copy of the workflow and its params.yaml). The
expensive part, two processes per variant, runs once for the module (`outcomes`) and the
tests read its results, one test id per variant:

- `prunebench plan` is the real `prunebench` console command, in a subprocess, delegating to
  the project's own job server (`prunebench.launcher`, what the workflow uses locally) so
  that torch is imported once, not once per variant;
- `snakemake -n` is Snakemake's own entry point (`snakemake.cli.main`, which the
  `snakemake` console script calls) run in a fresh fork, per variant, of a helper process
  that imported Snakemake and prunebench once (this file run as a script, see the end).

`test_the_console_commands_agree_with_the_harness` runs a variant through the plain console
commands (no server, no fork) and checks that they print the same line.
"""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from projectutil import copy_workflow_files

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: snakemake and prunebench
DRY_RUN = ["-n"]  # plain, as the README says: Snakemake finds the Snakefile and its profile
WORKERS = 2  # dry runs at once (each is one CPU-bound process)

NAN, INF = float("nan"), float("inf")
BASE = {
    "scale": "default",
    "runs_root": "results/runs",
    "studies": {"tiny": {
        "data": {"name": "digits", "val_size": 0.1},
        "model": {"name": "mlp_digits"},
        "train": {"epochs": 1, "lr": 0.05, "batch_size": 64},
        "finetune": {"epochs": 1},
        "methods": {"global_magnitude": {}},
        "sparsities": [0.5],
        "seeds": [0],
    }},
}


def top(key: str, value):
    """An edit setting the top-level `key` (dotted) of the params mapping."""
    def edit(params: dict) -> None:
        *parents, last = key.split(".")
        node = params
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return edit


def study(key: str, value):
    """An edit setting `studies.tiny.<key>`."""
    return top(f"studies.tiny.{key}", value)


def rename_study(name: str):
    return lambda params: params.update(studies={name: params["studies"]["tiny"]})


# (id, edit of BASE, text the error line must contain: the key, or the label/name at fault)
EDITS = [
    # Budgets: checked at parse time, or (a budget the scope cannot reach) when planned
    ("budget-kind", study("budgets", [{"kind": "flops", "values": [0.5]}]),
     "studies.tiny.budgets[0].kind"),
    ("budget-compression-nan", study("budgets", [{"kind": "compression", "values": [NAN]}]),
     "studies.tiny.budgets[0].values"),
    ("budget-latency-of-masks", study("budgets", [{"kind": "latency", "values": [2],
                                                   "batch_size": 1}]), "studies.tiny.budgets"),
    ("budget-out-of-reach", study("budgets", [{"kind": "params", "values": [0.9999]}]),
     "studies.tiny.budgets (global_magnitude)"),
    # Not a finite number
    ("lr-nan", study("train.lr", NAN), "studies.tiny.train.lr"),
    ("lr-inf", study("train.lr", INF), "studies.tiny.train.lr"),
    ("momentum-nan", study("train.momentum", NAN), "studies.tiny.train.momentum"),
    ("finetune-lr-minus-inf", study("finetune.lr", -INF), "studies.tiny.finetune.lr"),
    ("milestone-nan", study("train.milestones", [NAN]), "studies.tiny.train.milestones"),
    ("sparsity-nan", study("sparsities", [NAN]), "studies.tiny.sparsities"),
    ("val-size-nan", study("data.val_size", NAN), "studies.tiny.data.val_size"),
    ("distill-temperature-nan", study("distill.temperature", NAN),
     "studies.tiny.distill.temperature"),
    ("benchmark-time-inf", study("benchmark.min_time_s", INF), "studies.tiny.benchmark.min_time_s"),
    ("grasp-temperature-inf", study("methods", {"grasp": {"temperature": INF}}),
     "studies.tiny.methods.grasp.temperature"),
    # Out of range
    ("epochs-0", study("train.epochs", 0), "studies.tiny.train.epochs"),
    ("batch-size-0", study("train.batch_size", 0), "studies.tiny.train.batch_size"),
    ("lr-0", study("train.lr", 0), "studies.tiny.train.lr"),
    ("gamma-negative", study("train.gamma", -1), "studies.tiny.train.gamma"),
    ("milestone-negative", study("train.milestones", [-1]), "studies.tiny.train.milestones"),
    ("label-smoothing-1", study("train.label_smoothing", 1.0),
     "studies.tiny.train.label_smoothing"),
    ("distill-alpha-1.5", study("distill.alpha", 1.5), "studies.tiny.distill.alpha"),
    ("calibration-batches-0", study("calibration_batches", 0), "studies.tiny.calibration_batches"),
    ("threads-0", study("threads", 0), "studies.tiny.threads"),
    ("gpus-per-job-negative", top("gpus_per_job", -1), "gpus_per_job"),
    ("sparsity-1", study("sparsities", [0.5, 1.0]), "studies.tiny.sparsities"),
    ("sparsity-negative", study("sparsities", [-0.1]), "studies.tiny.sparsities"),
    ("sparsity-twice", study("sparsities", [0.5, 0.5]), "studies.tiny.sparsities"),
    ("channel-sparsity-1.5", study("channel_sparsities", [1.5]), "studies.tiny.channel_sparsities"),
    # Seeds
    ("seed-negative", study("seeds", [-1]), "studies.tiny.seeds"),
    ("seed-2-31", study("seeds", [2**31]), "studies.tiny.seeds"),
    ("seed-twice", study("seeds", [0, 0]), "studies.tiny.seeds"),
    ("seed-float", study("seeds", [1.5]), "studies.tiny.seeds"),
    ("seed-bool", study("seeds", [True]), "studies.tiny.seeds"),
    ("seeds-string", study("seeds", "0"), "studies.tiny.seeds"),
    ("seeds-empty", study("seeds", []), "studies.tiny.seeds"),
    # runs_root
    ("runs-root-empty", top("runs_root", ""), "runs_root"),
    ("runs-root-null", top("runs_root", None), "runs_root"),
    ("runs-root-number", top("runs_root", 5), "runs_root"),
    ("runs-root-parent", top("runs_root", "../elsewhere"), "runs_root"),
    ("runs-root-escapes", top("runs_root", "results/../../x"), "runs_root"),
    ("runs-root-absolute", top("runs_root", "/tmp/runs"), "runs_root"),
    ("runs-root-project", top("runs_root", "."), "runs_root"),
    # Names that are not safe in paths and shells
    ("study-parent", rename_study("../x"), "'../x'"),
    ("study-space", rename_study("a b"), "'a b'"),
    ("study-digit", rename_study("1st"), "'1st'"),
    ("label-parent", study("methods", {"../m": {"method": "random"}}), "'../m'"),
    ("label-space", study("methods", {"a b": {"method": "random"}}), "'a b'"),
    ("label-dash", study("methods", {"my-label": {"method": "random"}}), "'my-label'"),
    ("label-number", study("methods", {7: {"method": "random"}}), "studies.tiny.methods"),
    ("label-dense", study("methods", {"dense": {"method": "random"}}), "'dense'"),
    # Unknown keys, at every level
    ("unknown-top", top("bogus", 1), "bogus"),
    ("unknown-study", study("bogus", 1), "studies.tiny.bogus"),
    ("unknown-data", study("data.bogus", 1), "studies.tiny.data.bogus"),
    ("unknown-model", study("model.bogus", 1), "studies.tiny.model.bogus"),
    ("unknown-train", study("train.bogus", 1), "studies.tiny.train.bogus"),
    ("unknown-finetune", study("finetune.bogus", 1), "studies.tiny.finetune.bogus"),
    ("unknown-scope", study("scope.bogus", 1), "studies.tiny.scope.bogus"),
    ("unknown-distill", study("distill.bogus", 1), "studies.tiny.distill.bogus"),
    ("unknown-benchmark", study("benchmark.bogus", 1), "studies.tiny.benchmark.bogus"),
    ("unknown-option", study("methods.global_magnitude", {"bogus": 1}),
     "studies.tiny.methods.global_magnitude.bogus"),
    ("unknown-method", study("methods", {"mine": {"method": "nope"}}), "studies.tiny.methods.mine"),
    ("unknown-dataset", study("data.name", "imagenet"), "studies.tiny.data.name"),
    ("unknown-model-name", study("model.name", "resnet9000"), "studies.tiny.model.name"),
    ("unknown-optimizer", study("train.optimizer", "rmsprop"), "studies.tiny.train.optimizer"),
    ("unknown-recovery", study("recover", ["nope"]), "studies.tiny.recover"),
    ("unknown-scale", top("scale", "huge"), "scale"),
    ("unknown-only", top("only", "nope"), "only"),
    # Wrong types
    ("epochs-string", study("train.epochs", "3"), "studies.tiny.train.epochs"),
    ("batch-size-float", study("train.batch_size", 64.0), "studies.tiny.train.batch_size"),
    ("train-list", study("train", [1, 2]), "studies.tiny.train"),
    ("methods-list", study("methods", ["global_magnitude"]), "studies.tiny.methods"),
    ("studies-list", top("studies", ["tiny"]), "studies"),
    ("study-null", top("studies", {"tiny": None}), "studies.tiny"),
    ("sparsities-string", study("sparsities", "0.5"), "studies.tiny.sparsities"),
    ("sparsity-string", study("sparsities", ["0.5"]), "studies.tiny.sparsities"),
    ("exclude-first-string", study("scope.exclude_first", "yes"),
     "studies.tiny.scope.exclude_first"),
    ("recover-string", study("recover", "finetune"), "studies.tiny.recover"),
    # Every method's bad options
    ("snip-batches-0", study("methods", {"snip": {"batches": 0}}),
     "studies.tiny.methods.snip.batches"),
    ("grasp-temperature-negative", study("methods", {"grasp": {"temperature": -1}}),
     "studies.tiny.methods.grasp.temperature"),
    ("synflow-iterations-0", study("methods", {"synflow": {"iterations": 0}}),
     "studies.tiny.methods.synflow.iterations"),
    ("gradual-schedule-nope", study("methods", {"gradual_magnitude": {"schedule": "nope"}}),
     "studies.tiny.methods.gradual_magnitude.schedule"),
    ("gradual-ends-after-training", study("methods", {"gradual_magnitude": {"end_epoch": 5}}),
     "studies.tiny.methods.gradual_magnitude.end_epoch"),
    ("random-distribution-nope", study("methods", {"random": {"distribution": "nope"}}),
     "studies.tiny.methods.random.distribution"),
    ("random-match-snip", study("methods", {"random": {"match": "snip"}}),
     "studies.tiny.methods.random.match"),
    ("wanda-batches-0", study("methods", {"wanda": {"batches": 0}}),
     "studies.tiny.methods.wanda.batches"),
    ("nm-5-of-4", study("methods", {"nm": {"n": 5, "m": 4}}), "studies.tiny.methods.nm.n"),
    ("nm-n-string", study("methods", {"nm": {"n": "a"}}), "studies.tiny.methods.nm.n"),
    ("lottery-fraction-string", study("methods", {"lottery": {"prune_fraction": "abc"}}),
     "studies.tiny.methods.lottery.prune_fraction"),
    ("sensitivity-sweep-decreasing", study("methods", {"sensitivity": {"sweep": [0.5, 0.3]}}),
     "studies.tiny.methods.sensitivity.sweep"),
    # Empty
    ("methods-empty", study("methods", {}), "studies.tiny.methods"),
    ("methods-null", study("methods", None), "studies.tiny.methods"),
    ("studies-empty", top("studies", {}), "studies"),
]

# Files a mapping cannot express: (id, params.yaml text, what the error line must contain)
TEXTS = [
    ("duplicate-top-key", "scale: default\nscale: paper\nstudies:\n  tiny:\n"
     "    methods: {global_magnitude: {}}\n", "'scale' is given twice"),
    ("duplicate-study", "studies:\n  tiny:\n    methods: {global_magnitude: {}}\n"
     "  tiny:\n    methods: {random: {}}\n", "'tiny' is given twice"),
    ("duplicate-study-key", "studies:\n  tiny:\n    model: {name: mlp_digits}\n"
     "    methods: {global_magnitude: {}}\n    model: {name: cnn_digits}\n",
     "'model' is given twice"),
    ("duplicate-method-label", "studies:\n  tiny:\n    methods:\n      global_magnitude: {}\n"
     "      global_magnitude: {}\n", "'global_magnitude' is given twice"),
    ("duplicate-option", "studies:\n  tiny:\n    methods:\n      snip: {batches: 1, batches: 2}\n",
     "'batches' is given twice"),
]
# Files that Snakemake's own config loader (`configfile:`) refuses before the workflow's
# check runs: its line names no key, there is none to name. (id, text, prunebench's key,
# Snakemake's line)
WHOLE_FILE = [
    ("empty-file", "", "studies",
     "Config file must be given as JSON or YAML with keys at top level."),
    ("top-level-list", "- studies\n- tiny\n", "must hold a mapping",
     "Config file must be given as JSON or YAML with keys at top level."),
    ("not-yaml", "studies: {tiny: [\n", "is not valid YAML",
     "Config file is not valid JSON or YAML."),
]
INVALID = "invalid params.yaml: "  # how the workflow's one error line starts


@dataclass(frozen=True)
class Variant:
    name: str
    text: str  # params.yaml
    key: str  # what prunebench's error line (and the workflow's) must contain
    snakemake_line: str | None = None  # Snakemake's own line, when the workflow never runs

    def dry_run_line(self, output: str) -> list[str]:
        """The lines of a dry run's output that hold the error."""
        marker = self.snakemake_line or INVALID
        return [line for line in output.splitlines() if marker in line]


def _yaml(params: dict) -> str:
    return yaml.safe_dump(params, sort_keys=False)


def variants() -> list[Variant]:
    out = []
    for name, edit, key in EDITS:
        params = copy.deepcopy(BASE)
        edit(params)
        out.append(Variant(name, _yaml(params), key))
    return out + [Variant(*t) for t in TEXTS] + [Variant(*t) for t in WHOLE_FILE]


VARIANTS = variants()
BY_NAME = {v.name: v for v in VARIANTS}


# ------------------------------------------------------------------------- the harness


def copy_workflow(dest: Path, params_text: str) -> Path:
    dest.mkdir(parents=True)
    copy_workflow_files(dest)
    (dest / "params.yaml").write_text(params_text)
    return dest


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under `root`, files with their content hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


@dataclass
class Outcome:
    returncode: int
    output: str  # stdout and stderr
    stderr: str = ""
    stdout: str = ""
    changed: tuple[str, ...] = ()  # paths created, changed or removed


def _changes(before: dict, after: dict) -> tuple[str, ...]:
    return tuple(sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k)))


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def run_plans(dirs: list[Path], server: str | None) -> list[Outcome]:
    """`prunebench plan --params params.yaml` in each directory (through the job server at
    `server`, when given)."""
    env = _env(**({"PRUNEBENCH_SERVER": server} if server else {}))

    def plan(d: Path) -> Outcome:
        before = snapshot(d)
        proc = subprocess.run([str(BIN / "prunebench"), "plan", "--params", "params.yaml"],
                              cwd=d, env=env, capture_output=True, text=True, timeout=120)
        return Outcome(proc.returncode, proc.stdout + proc.stderr, proc.stderr, proc.stdout,
                       _changes(before, snapshot(d)))

    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(plan, dirs))


def run_dry_runs(dirs: list[Path], logs: Path) -> list[Outcome]:
    """`snakemake -n` in each directory, forked from one helper process (see the end)."""
    logs.mkdir(parents=True, exist_ok=True)
    before = [snapshot(d) for d in dirs]
    args = [sys.executable, __file__, str(logs), *map(str, dirs)]
    subprocess.run(args, env=_env(), check=True, timeout=600)
    out = []
    for i, d in enumerate(dirs):
        code = int((logs / f"{i}.rc").read_text())
        text = (logs / f"{i}.out").read_text()
        out.append(Outcome(code, text, changed=_changes(before[i], snapshot(d))))
    return out


def run_console_dry_run(d: Path) -> Outcome:
    before = snapshot(d)
    proc = subprocess.run([str(BIN / "snakemake"), *DRY_RUN], cwd=d, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    return Outcome(proc.returncode, proc.stdout, changed=_changes(before, snapshot(d)))


# ------------------------------------------------------------------------- the tests

pytest.importorskip("snakemake", reason="the workflow extra is not installed")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, tuple[Outcome, Outcome]]:
    """(prunebench plan, snakemake -n) outcome of every variant, by name."""
    from prunebench import launcher

    base = tmp_path_factory.mktemp("bad_input")
    dirs = [copy_workflow(base / v.name, v.text) for v in VARIANTS]
    socket_path = str(base / "server.sock")
    pid = launcher.start_server(socket_path, os.getpid(), str(base / "server.log"))
    try:
        plans = run_plans(dirs, socket_path)
    finally:
        launcher.stop_server(pid)
    dry_runs = run_dry_runs(dirs, base / "dry_run_logs")
    return {v.name: pair for v, pair in zip(VARIANTS, zip(plans, dry_runs))}


def test_there_are_at_least_forty_distinct_variants():
    assert len(BY_NAME) == len(VARIANTS) >= 40
    assert len({v.text for v in VARIANTS}) == len(VARIANTS)


def test_the_base_params_are_accepted(tmp_path):
    """Otherwise every variant would be refused for the wrong reason."""
    d = copy_workflow(tmp_path / "base", _yaml(BASE))
    (plan,) = run_plans([d], None)
    assert plan.returncode == 0, plan.output
    assert '"stage": "train"' in plan.stdout


@pytest.mark.parametrize("name", BY_NAME)
def test_prunebench_plan_refuses_with_one_line_naming_the_key(outcomes, name):
    plan, _ = outcomes[name]
    assert plan.returncode == 2, plan.output
    assert plan.stdout == ""
    lines = plan.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunebench: error: "), plan.stderr
    assert BY_NAME[name].key in lines[0]
    assert plan.changed == ()


@pytest.mark.parametrize("name", BY_NAME)
def test_snakemake_dry_run_refuses_with_one_line_naming_the_key(outcomes, name):
    variant, (_, dry_run) = BY_NAME[name], outcomes[name]
    assert dry_run.returncode != 0, dry_run.output
    assert "Traceback" not in dry_run.output
    lines = variant.dry_run_line(dry_run.output)
    assert len(lines) == 1, dry_run.output
    assert variant.snakemake_line or variant.key in lines[0], dry_run.output
    assert dry_run.changed == (), dry_run.changed  # not even .snakemake/


def test_the_console_commands_agree_with_the_harness(outcomes, tmp_path):
    """The harness (job server, forked Snakemake) prints what the plain commands print."""
    names = ("duplicate-method-label",)  # one: each plain dry run costs ~10 s of start-up
    dirs = [copy_workflow(tmp_path / name, BY_NAME[name].text) for name in names]
    plans = run_plans(dirs, None)
    with ThreadPoolExecutor(WORKERS) as pool:
        dry_runs = list(pool.map(run_console_dry_run, dirs))
    for name, plan, dry_run in zip(names, plans, dry_runs):
        harness_plan, harness_dry_run = outcomes[name]
        assert (plan.returncode, plan.stderr, plan.changed) == (
            harness_plan.returncode, harness_plan.stderr, harness_plan.changed)
        assert dry_run.returncode != 0 and dry_run.changed == ()
        line = BY_NAME[name].dry_run_line
        assert line(dry_run.output) == line(harness_dry_run.output) != []


# ------------------------------------------------------------------------- dry-run helper


def _dry_run_in_fork(workdir: str, log: str) -> int:
    """In a forked child: become `snakemake -n` in `workdir`, output to `log`."""
    import snakemake.cli

    os.chdir(workdir)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.argv = ["snakemake", *DRY_RUN]
    try:
        snakemake.cli.main(DRY_RUN)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0


def _serve_dry_runs(logs: Path, dirs: list[str]) -> None:
    """Import Snakemake and prunebench once, then fork one `snakemake -n` per directory,
    WORKERS at a time; each one's output goes to logs/<i>.out and its status to logs/<i>.rc."""
    import snakemake.cli

    import prunebench.plan  # noqa: F401
    import prunebench.pruning  # noqa: F401

    snakemake.cli.get_argument_parser()  # collects Snakemake's plugins: ~1 s per run otherwise

    running: dict[int, int] = {}

    def reap() -> None:
        pid, status = os.wait()
        (logs / f"{running.pop(pid)}.rc").write_text(str(os.waitstatus_to_exitcode(status)))

    for i, d in enumerate(dirs):
        if len(running) >= WORKERS:
            reap()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                status = _dry_run_in_fork(d, str(logs / f"{i}.out"))
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        running[pid] = i
    while running:
        reap()


if __name__ == "__main__":
    _serve_dry_runs(Path(sys.argv[1]), sys.argv[2:])
