"""The contract every stage follows, and the run descriptions several stages share.

A stage is one module: it says which runs it makes for a study (`runs(ctx)`: one per grid
point, each with a typed spec that names its parent runs) and how to make one run
(`execute(ex, run)`, given the executor). Listing runs is pure: it reads a `StudyContext`
(no device, no data), so the planner and the Snakemake process can call it. `plan.py`, the
CLI and the workflow iterate over the stages; none of them branches on a method's name or on
when it acts. A method declares what it needs (`when`, `produces`, and hooks such as
`pretrain`, `rounds`, `training_callback`, `iterative`, `sensitivity_sweep`) and the stages
call those declarations, never a method's options by name, so adding a method never touches
a stage.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from prunebench import plugins
from prunebench.budgets import Budget, planned_sparsity, refusal
from prunebench.config import MethodEntry, TrainConfig
from prunebench.context import StudyContext
from prunebench.pruning import METHODS, PruningMethod
from prunebench.runs import Run
from prunebench.specs import DenseSpec, PretrainSpec

if TYPE_CHECKING:
    from prunebench.executor import Executor

DENSE = "dense"


class Stage:
    """One kind of work. Subclasses set the class attributes and implement the two methods.

    name:   the CLI verb, the plan's job stage and the workflow rule
    kind:   the run directory kind (`results/runs/<kind>/<hash>`)
    result: its runs are results (tables and plots), not intermediate
    default_label: what `prunebench <name>` runs without --method (None: every label)
    """

    name: str = ""
    kind: str = ""
    help: str = ""
    result: bool = False
    default_label: str | None = None

    def runs(self, ctx: StudyContext) -> list[Run]:
        raise NotImplementedError

    def execute(self, ex: Executor, run: Run) -> None:
        """Make `run`; its parents are done and its log is open."""
        raise NotImplementedError

    def stack_recipe(self, ctx: StudyContext, run: Run) -> TrainConfig | None:
        """The recipe `run` trains with when it may share a stack with other runs of this
        stage and recipe (`prunebench.stacking`), else None (the default): it trains alone."""
        return None

    def execute_stack(self, ex: Executor, runs: list[Run]) -> None:
        """Make `runs` as one stack; their parents are done and their logs are open."""
        raise NotImplementedError

    def job_key(self, run: Run) -> str | None:
        """Runs with the same key (and label) are made by one job, in order; None (the
        default) makes every run its own job, one per grid point."""
        return None


def method_of(entry: MethodEntry) -> PruningMethod:
    return METHODS.get(entry.method)


def targets(ctx: StudyContext, entry: MethodEntry) -> tuple[float, ...]:
    """What the method is asked for at each grid point: channel sparsities for structured
    methods, weight sparsities otherwise (or the one its options fix, N:M)."""
    method = method_of(entry)
    if method.structured:
        return ctx.study.channel_sparsities
    return method.sparsities(entry.options, ctx.study.sparsities)


def budgets(ctx: StudyContext, entry: MethodEntry) -> tuple[Budget, ...]:
    """The study's budget points this method is asked for (`prunebench.budgets.refusal`
    says why the others are not)."""
    method = method_of(entry)
    return tuple(b for b in ctx.study.budgets if refusal(method, entry.options, b) is None)


def budget_setting(ctx: StudyContext, entry: MethodEntry, budget: Budget) -> float | None:
    """The sparsity an unstructured method is asked for to meet `budget`, known at planning
    (`params`, `compression`); None where the prune stage searches for it."""
    if method_of(entry).structured:
        return None
    return planned_sparsity(budget, ctx.scope_counts,
                            f"studies.{ctx.study.name}.budgets ({entry.label})")


def target_meta(method: PruningMethod, target: float | None,
                budget: Budget | None = None) -> dict[str, Any]:
    """Names that cannot be misread: what a structured method was asked for is the fraction
    of channels removed, never a weight sparsity. A run asked for a budget says so in its
    own columns (`budget_kind`, `budget_value`); its setting is in its metrics."""
    if budget is not None:
        return {"target_sparsity": None if method.structured else target,
                "channel_sparsity": None, "budget_kind": budget.kind,
                "budget_value": budget.value, "budget_batch_size": budget.batch_size}
    if method.structured:
        return {"target_sparsity": None, "channel_sparsity": target}
    return {"target_sparsity": target, "channel_sparsity": None}


def base_meta(ctx: StudyContext, seed: int) -> dict[str, Any]:
    """What every run's `config.json` says of it besides its description: `label` is the
    study's method label; `recovery` (finetune, distill) and `control` (ticket, reinit) are
    their own keys, and so their own columns of `runs.csv`, never parts of the label. (A
    method's own pretraining run, never a result, is labelled `<label>_pretrain`: the
    readable name of its job.)"""
    s = ctx.study
    return {"study": s.name, "dataset": s.data.name, "model": s.model.label, "method": DENSE,
            "label": DENSE, "target_sparsity": 0.0, "channel_sparsity": None,
            "recovery": None, "control": None, "seed": seed, "data": dataclasses.asdict(s.data),
            "result": True}


def dense_description(ctx: StudyContext, recipe: TrainConfig, seed: int) -> dict[str, Any]:
    """What names a dense training run. Every other run nests it, so the thread count and the
    CPU code path (`determinism`), which change float results, name them all; their defaults
    (1, native) are left out so that names made before they were recorded stay valid."""
    s = ctx.study
    desc = {"data": s.data, "model": s.model, "train": recipe, "seed": seed}
    if s.threads != 1:
        desc["threads"] = s.threads
    if s.determinism != "native":
        desc["determinism"] = s.determinism
    code = user_code(ctx)
    if code:  # the user's own model or data code names the runs (none: the package's own)
        desc["code"] = code
    return desc


def user_code(ctx: StudyContext) -> dict[str, Any]:
    """The identity of the user's code and data a study's dense model depends on: the
    plugins that registered its model or dataset (their content hashes), the source of a
    model factory inside the project, and the content fingerprint of a file dataset (an
    image folder, NumPy arrays). Empty for the package's own models and datasets."""
    from prunebench.data import DATASETS, dataset_fingerprint
    from prunebench.models import MODELS

    model = ctx.study.model
    code: dict[str, Any] = {}
    data = dataset_fingerprint(ctx.study.data.name)  # None for the package's own datasets
    if data is not None:
        code["data"] = data
    origins = [DATASETS.origin(ctx.study.data.name)]
    if model.factory is None:
        origins.append(MODELS.origin(model.name))
    else:
        code["factory"] = factory_identity(model.factory)
    found = plugins.identity(*origins)
    if found:
        code["plugins"] = found
    return code


def factory_identity(spec: str) -> dict[str, str]:
    """A model factory's identity: the SHA-256 of its module's source and of the project
    modules it uses, where it is inside the project (the user's own file), else the version
    of the installed package it comes from."""
    import importlib
    import importlib.metadata

    module = importlib.import_module(spec.split(":")[0])
    sources = plugins.project_sources(module)
    if sources:  # the user's own file, and the project modules it uses
        return {"sha256": plugins.source_hash(sources)}
    top = module.__name__.split(".")[0]
    try:
        return {"package": top, "version": importlib.metadata.version(top)}
    except importlib.metadata.PackageNotFoundError:
        return {"package": top, "version": str(getattr(module, "__version__", "unknown"))}


def dense_run(ctx: StudyContext, seed: int) -> Run:
    """The dense baseline of one seed (also every method's source of initial weights)."""
    key = ("dense", seed)
    if key not in ctx.memo:
        desc = dense_description(ctx, ctx.study.train, seed)
        ctx.memo[key] = Run(ctx.root, "train", desc, base_meta(ctx, seed), stage="train",
                            label=DENSE, spec=DenseSpec(seed=seed, target=0.0))
    return ctx.memo[key]


def pretrain_recipe(ctx: StudyContext, entry: MethodEntry) -> TrainConfig:
    """The dense recipe with a method's own training changes (slimming's BN penalty)."""
    method = method_of(entry)
    return dataclasses.replace(ctx.study.train, **method.pretrain(entry.options))


def pretrained_run(ctx: StudyContext, entry: MethodEntry, seed: int) -> Run:
    """The trained model a method prunes: the dense run, or its own pretraining run."""
    if method_of(entry).pretrain is None:
        return dense_run(ctx, seed)
    desc = dense_description(ctx, pretrain_recipe(ctx, entry), seed)
    if method_of(entry).version != 1:  # its own training is part of the method's semantics
        desc["method"] = {"name": entry.method, "version": method_of(entry).version}
    meta = {**base_meta(ctx, seed), "method": entry.method, "label": f"{entry.label}_pretrain",
            "result": False}
    return Run(ctx.root, "train", desc, meta, stage="train", label=entry.label,
               spec=PretrainSpec(seed=seed, entry=entry, target=0.0))


def method_description(entry: MethodEntry) -> dict[str, Any]:
    """A method as a run's description names it: options equal to their defaults are left
    out, so adding an option with a default keeps old run names valid."""
    method = method_of(entry)
    desc = {"method": entry.method, "options": method.hashed_options(entry.options)}
    if method.version != 1:  # a declared change of semantics renames the method's runs
        desc["version"] = method.version
    plugin = plugins.identity(METHODS.origin(entry.method))
    if plugin:  # a method from a plugin: its source names the runs
        desc["plugin"] = plugin
    return desc
