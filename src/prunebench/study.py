"""Parse and validate `params.yaml` into `Study` objects, before any work.

This sits above the registries (data, models, pruning methods, recovery variants) and below
the stages: every key of a study, every method option (declared once, with its type and
range, by the method itself) and every name is checked here, so `prunebench plan`,
`snakemake -n` and every CLI verb refuse a bad value with one line that names the key and
what is allowed. `config.py` stays a leaf of plain dataclasses and hashing.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prunebench.budgets import KINDS as BUDGET_KINDS
from prunebench.budgets import parse_budgets
from prunebench.papers import parse_papers
from prunebench.papers import schema as papers_schema
from prunebench.config import (
    BenchmarkConfig,
    CheckpointConfig,
    DataConfig,
    DistillConfig,
    MethodEntry,
    ModelConfig,
    RewindConfig,
    ScopeConfig,
    StackConfig,
    Study,
    TrainConfig,
    apply_overrides,
    dataclass_schema,
    from_dict,
    read_params,
)
from prunebench.determinism import OPTION as DETERMINISM
from prunebench.errors import ConfigError
from prunebench.options import options_schema

STUDY_KEYS = (
    "data", "model", "train", "finetune", "scope", "methods", "sparsities", "seeds", "scale",
    "calibration_batches", "eval_batch_size", "channel_sparsities", "recover", "distill", "rewind",
    "benchmark", "threads", "stack", "plugins", "determinism", "budgets", "papers",
)
MAX_STACK = 64
SCALES = ("default", "paper", "smoke", "reference")
TOP_KEYS = ("scale", "only", "runs_root", "gpus_per_job", "plugins", "studies")
MAX_GPUS_PER_JOB = 8
RECOVERY_VARIANTS = ("finetune", "distill", "rewind")
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # study and method labels: safe in paths and shells
MAX_SEED = 2**31 - 1


def _positive(value: Any, key: str, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _check_train(t: TrainConfig, key: str, *, allow_no_epochs: bool = False) -> None:
    """`allow_no_epochs`: a fine-tuning recipe may have 0 epochs (prune, no retraining)."""
    _positive(t.epochs, f"{key}.epochs", allow_zero=allow_no_epochs)
    _positive(t.batch_size, f"{key}.batch_size")
    _positive(t.lr, f"{key}.lr")
    _positive(t.weight_decay, f"{key}.weight_decay", allow_zero=True)
    _positive(t.warmup_epochs, f"{key}.warmup_epochs", allow_zero=True)
    _positive(t.bn_l1, f"{key}.bn_l1", allow_zero=True)
    if not 0.0 <= t.label_smoothing < 1.0:
        raise ConfigError(f"{key}.label_smoothing must be in [0, 1), got {t.label_smoothing!r}")
    if not 0.0 <= t.momentum < 1.0:
        raise ConfigError(f"{key}.momentum must be in [0, 1), got {t.momentum!r}")
    _positive(t.gamma, f"{key}.gamma")
    if any(m <= 0 for m in t.milestones) or any(
            a >= b for a, b in zip(t.milestones, t.milestones[1:])):
        raise ConfigError(f"{key}.milestones must be increasing epochs > 0, "
                          f"got {list(t.milestones)!r}")


def _check_name(name: Any, key: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"{key}: name {name!r} must start with a letter and hold only "
                          "letters, digits and _")
    return name


def _fractions(values: Any, key: str) -> tuple[float, ...]:
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        raise ConfigError(f"{key} must be a non-empty list of numbers in [0, 1)")
    out = tuple(check_fraction(v, key) for v in values)
    if len(set(out)) != len(out):
        raise ConfigError(f"{key} lists a value twice: {list(values)!r}")
    return out


def check_fraction(value: Any, key: str) -> float:
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not 0.0 <= float(value) < 1.0):
        raise ConfigError(f"{key} must be a number in [0, 1), got {value!r}")
    return float(value)


def _methods(raw: Any, key: str) -> tuple[MethodEntry, ...]:
    from prunebench.pruning import METHODS

    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{key} must be a non-empty mapping of label -> options")
    entries = []
    for label, opts in raw.items():
        _check_name(label, key)
        if opts is None:
            opts = {}
        if not isinstance(opts, Mapping):
            raise ConfigError(f"{key}.{label} must be a mapping of option -> value, got {opts!r}")
        opts = dict(opts)
        name = opts.pop("method", label)
        if name not in METHODS:
            raise ConfigError(f"unknown method {name!r} (key {key}.{label}); "
                              f"allowed: {', '.join(METHODS.names())}")
        resolved = METHODS.get(name).resolve_options(opts, f"{key}.{label}")
        entries.append(MethodEntry(label, name, _freeze(resolved)))
    if "dense" in raw:
        raise ConfigError(f"{key}: 'dense' names the dense baseline; choose another label")
    return tuple(entries)


def _freeze(options: Mapping[str, Any]) -> Mapping[str, Any]:
    import types

    return types.MappingProxyType(
        {k: tuple(v) if isinstance(v, list) else v for k, v in sorted(options.items())})


def parse_study(name: str, raw: Mapping[str, Any]) -> Study:
    """Validate one study mapping from params.yaml into a `Study`."""
    from prunebench.data import DATASETS
    from prunebench.pruning import METHODS

    key = f"studies.{name}"
    _check_name(name, "studies")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key} must be a mapping")
    unknown = sorted(set(raw) - set(STUDY_KEYS), key=str)
    if unknown:
        raise ConfigError(f"unknown key {key}.{unknown[0]}; allowed: {', '.join(STUDY_KEYS)}")
    from prunebench import plugins

    plugins.load_all(raw.get("plugins"), f"{key}.plugins", entry_points=False)
    data = from_dict(DataConfig, raw.get("data"), f"{key}.data")
    if data.format is not None:
        from prunebench.data import register_format_dataset

        register_format_dataset(data.name, data.format, data.path, key=f"{key}.data",
                                **(data.options or {}))
    elif data.path is not None or data.options is not None:
        raise ConfigError(f"{key}.data: path and options describe a file dataset; give its "
                          "format too (image_folder or numpy)")
    if data.name not in DATASETS:
        raise ConfigError(f"unknown dataset {data.name!r} (key {key}.data.name); "
                          f"allowed: {', '.join(DATASETS)}")
    if (data.val_size < 0) or (isinstance(data.val_size, float) and data.val_size >= 1.0):
        raise ConfigError(f"{key}.data.val_size must be a fraction in [0, 1) or a count >= 0, "
                          f"got {data.val_size!r}")
    model = _model(raw.get("model"), f"{key}.model")
    train = from_dict(TrainConfig, raw.get("train"), f"{key}.train")
    _check_train(train, f"{key}.train", allow_no_epochs=model.checkpoint is not None)
    finetune_raw = raw.get("finetune") or {}
    if train.epochs == 0 and "epochs" not in finetune_raw:
        raise ConfigError(f"{key}.finetune.epochs: train.epochs is 0 (the checkpoint is kept "
                          "as it is), so give the fine-tuning epochs explicitly")
    partial = from_dict(TrainConfig, finetune_raw, f"{key}.finetune")
    finetune = dataclasses.replace(train, **{k: getattr(partial, k) for k in finetune_raw})
    _check_train(finetune, f"{key}.finetune", allow_no_epochs=True)
    scope = from_dict(ScopeConfig, raw.get("scope"), f"{key}.scope")
    distill = from_dict(DistillConfig, raw.get("distill"), f"{key}.distill")
    _positive(distill.temperature, f"{key}.distill.temperature")
    if not 0.0 <= distill.alpha <= 1.0:
        raise ConfigError(f"{key}.distill.alpha must be in [0, 1], got {distill.alpha!r}")
    rewind = from_dict(RewindConfig, raw.get("rewind"), f"{key}.rewind")
    _positive(rewind.iteration, f"{key}.rewind.iteration", allow_zero=True)
    benchmark = _benchmark(raw.get("benchmark"), f"{key}.benchmark")
    stack = from_dict(StackConfig, raw.get("stack"), f"{key}.stack")
    if not 1 <= stack.max_members <= MAX_STACK:
        raise ConfigError(f"{key}.stack.max_members must be an integer in [1, {MAX_STACK}], "
                          f"got {stack.max_members!r}")
    _positive(stack.memory_mb, f"{key}.stack.memory_mb")
    methods = _methods(raw.get("methods"), f"{key}.methods")
    sparsities = _fractions(raw.get("sparsities", [0.5, 0.8, 0.9]), f"{key}.sparsities")
    channel = _fractions(raw.get("channel_sparsities", list(Study.channel_sparsities)),
                         f"{key}.channel_sparsities")
    _check_methods_fit_model(model, data, scope, methods, key)
    if train.epochs == 0:
        for entry in methods:
            method = METHODS.get(entry.method)
            if method.pretrain is not None or method.iterative is not None or method.when in (
                    "init", "during_training"):
                raise ConfigError(f"method {entry.method!r} (key {key}.methods.{entry.label}) "
                                  f"trains with the study's train recipe, but train.epochs "
                                  "is 0")
    for entry in methods:
        method = METHODS.get(entry.method)
        if method.check_grid is not None:
            grid = channel if method.structured else method.sparsities(entry.options, sparsities)
            method.check_grid(entry.options, train, grid, f"{key}.methods.{entry.label}")
    seeds = raw.get("seeds", [0])
    if (not isinstance(seeds, Sequence) or isinstance(seeds, str) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED
                       for s in seeds) or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"{key}.seeds must be a non-empty list of distinct integers in "
                          f"[0, {MAX_SEED}], got {seeds!r}")
    recover = raw.get("recover", list(Study.recover))
    if (not isinstance(recover, Sequence) or isinstance(recover, str) or not recover
            or any(r not in RECOVERY_VARIANTS for r in recover) or len(set(recover)) != len(recover)):
        raise ConfigError(f"{key}.recover must be a non-empty list of distinct values from "
                          f"{', '.join(RECOVERY_VARIANTS)}, got {recover!r}")
    if "rewind" in recover and train.epochs == 0:
        raise ConfigError(f"{key}.recover: rewind retrains with the study's train recipe, but "
                          "train.epochs is 0")
    scale = raw.get("scale", "default")
    if scale not in SCALES:
        raise ConfigError(f"{key}.scale must be one of {', '.join(SCALES)}, got {scale!r}")
    extra = {}
    for k in ("calibration_batches", "eval_batch_size", "threads"):
        if k in raw:
            if not isinstance(raw[k], int) or isinstance(raw[k], bool) or raw[k] <= 0:
                raise ConfigError(f"{key}.{k} must be a positive integer, got {raw[k]!r}")
            extra[k] = raw[k]
    if "determinism" in raw:
        extra["determinism"] = DETERMINISM.check(raw["determinism"], f"{key}.determinism")
    budgets = parse_budgets(raw.get("budgets"), f"{key}.budgets",
                            benchmark_batch_sizes=benchmark.batch_sizes)
    if budgets:
        _check_budgets_asked(budgets, methods, f"{key}.budgets")
        extra["budgets"] = budgets
    if raw.get("papers") is not None:
        extra["papers"] = parse_papers(raw["papers"], f"{key}.papers",
                                       _series_grid(methods, sparsities, channel, recover))
    return Study(name, data, model, train, finetune, scope, methods, sparsities, tuple(seeds),
                 scale, channel_sparsities=channel, recover=tuple(recover), distill=distill,
                 rewind=rewind,
                 benchmark=benchmark, stack=stack, **extra)


def _series_grid(methods: Sequence[MethodEntry], sparsities, channel, recover,
                 ) -> dict[str, tuple[float, ...]]:
    """Every series a study shows (`labels.series_name`) -> its targets: what a paper's
    values may name (`prunebench.papers`)."""
    from prunebench.labels import series_name
    from prunebench.pruning import METHODS

    grid: dict[str, tuple[float, ...]] = {"dense": ()}
    for entry in methods:
        method = METHODS.get(entry.method)
        targets = (tuple(channel) if method.structured
                   else tuple(method.sparsities(entry.options, sparsities)))
        grid[entry.label] = targets
        for variant in recover:
            if variant != "finetune":
                grid[series_name(entry.label, variant)] = targets
        grid[series_name(entry.label, None, "reinit")] = targets
    return grid


SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_budgets_asked(budgets, methods: Sequence[MethodEntry], key: str) -> None:
    """Refuse a budget that no method of the study can be asked for (its table would be
    empty), naming each method's reason."""
    from prunebench.budgets import refusal
    from prunebench.pruning import METHODS

    for budget in budgets:
        reasons = {e.label: refusal(METHODS.get(e.method), e.options, budget) for e in methods}
        if all(reasons.values()):
            why = "; ".join(f"{label}: {r}" for label, r in reasons.items())
            raise ConfigError(f"{key}: no method of the study can be asked for "
                              f"{budget.label()} ({why})")


def _check_methods_fit_model(model: ModelConfig, data: DataConfig, scope: ScopeConfig,
                             methods: Sequence[MethodEntry], key: str) -> None:
    """A model of the user's own (a factory, or a plugin's model) is built once, on the CPU,
    and every method of the study is asked whether it can prune it, so that a method that
    cannot handle a layer type says so now, not after the dense training. The package's own
    models are known to suit every method (the tests run them all) and are not built."""
    from prunebench.data import dataset_shape
    from prunebench.models import MODELS
    from prunebench.pruning import METHODS, Scope
    from prunebench.runs import Arch

    if model.factory is None and MODELS.origin(model.name) is None:
        return
    import torch

    num_classes, input_shape = dataset_shape(data.name)
    try:
        with torch.random.fork_rng(devices=[]):  # the caller's random stream stays as it was
            net = Arch.of(model.name, num_classes, input_shape, factory=model.factory,
                          kwargs=model.kwargs).build()
            with torch.no_grad():
                out = net.eval()(torch.zeros(2, *input_shape))
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 (the user's model code)
        raise ConfigError(f"{key}.model {model.label!r} cannot be built or run on inputs of "
                          f"shape {tuple(input_shape)} from {data.name!r}: "
                          f"{type(err).__name__}: {err}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{key}.model {model.label!r} gives outputs of shape {shape} for a "
                          f"batch of 2, but {data.name!r} has {num_classes} classes: pass "
                          "num_classes in model.kwargs if its factory takes it another way")
    pruning_scope = Scope(**dataclasses.asdict(scope))
    for entry in methods:
        reason = METHODS.get(entry.method).model_refusal(net, tuple(input_shape),
                                                         entry.options, pruning_scope)
        if reason:
            raise ConfigError(f"method {entry.method!r} (key {key}.methods.{entry.label}) "
                              f"cannot prune model {model.label!r}: {reason}")


def _model(raw: Any, key: str) -> ModelConfig:
    """`model: {name | factory, kwargs, checkpoint}`, checked: the name is registered (or the
    factory imports and is callable), the kwargs bind to its signature, and a checkpoint
    names an existing file inside the project with a SHA-256."""
    from prunebench.models import MODELS, check_model_kwargs, resolve_factory

    raw = dict(raw or {})
    checkpoint = raw.pop("checkpoint", None)
    if "factory" in raw and "name" in raw:
        raise ConfigError(f"{key}: give name (a registered model) or factory, not both")
    model = from_dict(ModelConfig, raw, key)
    if not model.kwargs:
        model = dataclasses.replace(model, kwargs=None)  # `kwargs: {}` names runs as none
    if model.factory is not None:
        model = dataclasses.replace(model, name=None)
        fn = resolve_factory(model.factory, f"{key}.factory")
    else:
        fn = MODELS.get(model.name) if model.name in MODELS else None
        if fn is None:
            raise ConfigError(f"unknown model {model.name!r} (key {key}.name); "
                              f"allowed: {', '.join(MODELS.names())}")
    check_model_kwargs(fn, model.kwargs or {}, f"{key}.kwargs", factory=model.factory)
    if checkpoint is not None:
        ckpt = from_dict(CheckpointConfig, checkpoint, f"{key}.checkpoint")
        if not SHA256.fullmatch(ckpt.sha256):
            raise ConfigError(f"{key}.checkpoint.sha256 must be 64 lowercase hex digits, got "
                              f"{ckpt.sha256!r}")
        path = Path(ckpt.path)
        if path.is_absolute() or ".." in path.parts:
            raise ConfigError(f"{key}.checkpoint.path must be a relative path inside the "
                              f"project, got {ckpt.path!r}")
        if not path.is_file():
            raise ConfigError(f"{key}.checkpoint.path {ckpt.path!r} not found")
        model = dataclasses.replace(model, checkpoint=ckpt)
    return model


def _benchmark(raw: Any, key: str) -> BenchmarkConfig:
    from prunebench.metrics import MODES

    cfg = from_dict(BenchmarkConfig, raw, key)
    if not cfg.batch_sizes or any(b < 1 for b in cfg.batch_sizes):
        raise ConfigError(f"{key}.batch_sizes must be a non-empty list of integers >= 1, "
                          f"got {list(cfg.batch_sizes)!r}")
    _positive(cfg.min_time_s, f"{key}.min_time_s")
    bad = [m for m in cfg.modes if m not in MODES]
    if bad or not cfg.modes:
        raise ConfigError(f"{key}.modes must be a non-empty list from {', '.join(MODES)}, "
                          f"got {list(cfg.modes)!r}")
    return cfg


def _rewind_schema() -> dict:
    schema = dataclass_schema(RewindConfig)
    schema["properties"]["iteration"].update(minimum=0)
    return schema


def _stack_schema() -> dict:
    schema = dataclass_schema(StackConfig)
    schema["properties"]["max_members"].update(minimum=1, maximum=MAX_STACK)
    schema["properties"]["memory_mb"].update(minimum=1)
    return schema


def _runs_root(raw: Mapping[str, Any]) -> None:
    root = raw.get("runs_root", "results/runs")
    if not isinstance(root, str) or not root.strip():
        raise ConfigError(f"runs_root must be a non-empty path, got {root!r}")
    path = Path(root)
    if path.is_absolute() or ".." in path.parts or path.resolve() == Path.cwd().resolve():
        raise ConfigError(f"runs_root must be a relative path inside the project, not the "
                          f"project root, got {root!r}")


def validate_params(raw: Mapping[str, Any]) -> dict[str, Study]:
    """Validate the whole params mapping; returns every study by name."""
    unknown = sorted(set(raw) - set(TOP_KEYS), key=str)
    if unknown:
        raise ConfigError(f"unknown top-level key {unknown[0]!r}; allowed: {', '.join(TOP_KEYS)}")
    scale = raw.get("scale", "default")
    if scale not in (*SCALES, "all"):
        raise ConfigError(f"scale must be one of {', '.join((*SCALES, 'all'))}; got {scale!r}")
    _runs_root(raw)
    gpus = raw.get("gpus_per_job", 0)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or not 0 <= gpus <= MAX_GPUS_PER_JOB:
        raise ConfigError(f"gpus_per_job must be an integer in [0, {MAX_GPUS_PER_JOB}] (GPUs "
                          f"each workflow job asks for), got {gpus!r}")
    studies = raw.get("studies")
    if not isinstance(studies, Mapping) or not studies:
        raise ConfigError("studies must be a non-empty mapping of study name -> study")
    from prunebench import plugins

    # Plugins first (installed packages', then the file's, then each study's as it is
    # parsed), so every process that reads the params registers the same things in order.
    plugins.load_all(raw.get("plugins"), "plugins")
    return {name: parse_study(name, study) for name, study in studies.items()}


def only_studies(raw: Mapping[str, Any], names: Sequence[str]) -> list[str] | None:
    """The study names of the `only` key (a list, or names separated by commas), checked."""
    only = raw.get("only")
    if only is None:
        return None
    if isinstance(only, str):
        only = [x.strip() for x in only.split(",") if x.strip()]
    if not isinstance(only, list) or not only or any(x not in names for x in only):
        raise ConfigError(f"only must name studies of the params file (a list or names "
                          f"separated by commas); allowed: {', '.join(names)}; got {raw['only']!r}")
    return only


def selected_studies(raw: Mapping[str, Any]) -> dict[str, Study]:
    """The studies that `only` names, else those `scale` switches on (default: the offline
    `digits` ones)."""
    studies = validate_params(raw)
    only = only_studies(raw, list(studies))
    if only is not None:
        return {n: studies[n] for n in only}
    scale = raw.get("scale", "default")
    return {n: s for n, s in studies.items() if scale == "all" or s.scale == scale}


def load_study(path: str | Path, name: str | None, overrides: Sequence[str] = ()) -> Study:
    """One study of a params file; `overrides` are `key=value` relative to the study."""
    raw = read_params(path)
    if name is None:
        names = list(raw.get("studies") or {})
        if len(names) != 1:
            raise ConfigError(f"--study is required; allowed: {', '.join(map(str, names))}")
        name = names[0]
    raw = apply_overrides(raw, [f"studies.{name}.{o}" for o in overrides])
    studies = validate_params(raw)
    if name not in studies:
        raise ConfigError(f"unknown study {name!r} (key studies); allowed: {', '.join(studies)}")
    return studies[name]


def json_schema() -> dict:
    """JSON Schema of params.yaml (defaults documented), generated from the dataclasses and
    the methods' declared options."""
    from prunebench.plugins import ENTRY_POINT_GROUP
    from prunebench.pruning import METHODS

    train = dataclass_schema(TrainConfig)
    fractions = {"type": "array", "items": {"type": "number", "minimum": 0, "exclusiveMaximum": 1}}
    method_schemas = {  # the package's own methods (a plugin's are documented by it)
        name: {**options_schema(METHODS.get(name).options),
               "description": (METHODS.get(name).fn.__doc__ or "").strip().split("\n")[0]}
        for name in METHODS.names() if METHODS.origin(name) is None
    }
    plugins = {"type": "array", "items": {"type": "string"}, "default": [],
               "description": "modules (`my_pkg.plugin`) or .py files inside the project "
                              "(`plugins/mine.py`) imported before the studies are parsed; "
                              "they register models, datasets and methods (installed packages "
                              f"register through the entry-point group {ENTRY_POINT_GROUP!r})"}
    model = dataclass_schema(ModelConfig)
    model["properties"]["kwargs"] = {"type": ["object", "null"], "default": None,
                                     "description": model["properties"]["kwargs"]["description"]}
    model["properties"]["checkpoint"] = {
        "anyOf": [dataclass_schema(CheckpointConfig), {"type": "null"}], "default": None,
        "description": model["properties"]["checkpoint"]["description"]}
    model["properties"]["checkpoint"]["anyOf"][0]["required"] = ["path", "sha256"]
    study = {
        "type": "object",
        "additionalProperties": False,
        "required": ["methods"],
        "properties": {
            "plugins": plugins,
            "data": dataclass_schema(DataConfig),
            "model": model,
            "train": train,
            "finetune": {**train, "description": "overrides of `train` for retraining after pruning"},
            "scope": dataclass_schema(ScopeConfig),
            "distill": dataclass_schema(DistillConfig),
            "rewind": _rewind_schema(),
            "benchmark": dataclass_schema(BenchmarkConfig),
            "stack": _stack_schema(),
            "methods": {
                "type": "object",
                "description": "label -> options; `method:` names the registry entry (default: "
                               "the label). Each method's options: see $defs.methods",
                "additionalProperties": {"type": ["object", "null"]},
            },
            "sparsities": {**fractions, "default": [0.5, 0.8, 0.9],
                           "description": "target weight sparsities of unstructured methods"},
            "channel_sparsities": {**fractions, "default": list(Study.channel_sparsities),
                                   "description": "fractions of channels structured methods remove"},
            "recover": {"type": "array", "items": {"enum": list(RECOVERY_VARIANTS)},
                        "default": list(Study.recover),
                        "description": "how pruned networks recover: fine-tune, distill and/or "
                                       "rewind (see `rewind`)"},
            "seeds": {"type": "array", "items": {"type": "integer", "minimum": 0}, "default": [0]},
            "scale": {"enum": list(SCALES), "default": "default"},
            "calibration_batches": {"type": "integer", "minimum": 1, "default": 8},
            "eval_batch_size": {"type": "integer", "minimum": 1, "default": 1000},
            "threads": {"type": "integer", "minimum": 1, "default": 1,
                        "description": "torch CPU threads of every job; results depend on it, "
                                       "so it is part of every run's name (when not 1)"},
            "determinism": DETERMINISM.schema(),
            "papers": papers_schema(),
            "budgets": {
                "type": "array", "default": [],
                "description": "cost targets every method is asked for besides its "
                               "sparsities: structured methods search their channel fraction, "
                               "unstructured ones their sparsity (prunebench.budgets)",
                "items": {
                    "type": "object", "additionalProperties": False,
                    "required": ["kind", "values"],
                    "properties": {
                        "kind": {"enum": list(BUDGET_KINDS),
                                 "description": "; ".join(f"{k}: {v}"
                                                          for k, v in BUDGET_KINDS.items())},
                        "values": {"type": "array", "items": {"type": "number"}, "minItems": 1},
                        "batch_size": {"type": "integer", "minimum": 1,
                                       "description": "latency only: one of benchmark.batch_sizes"},
                        "tolerance": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.5,
                                      "default": 0.05,
                                      "description": "relative, on the share of the cost left"},
                    },
                },
            },
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "prunebench params.yaml",
        "type": "object",
        "additionalProperties": False,
        "required": ["studies"],
        "properties": {
            "scale": {"enum": [*SCALES, "all"], "default": "default",
                      "description": "which studies run: default (offline digits), paper, "
                                     "smoke (a one-minute check), reference (the default study on "
                                     "a pinned CPU code path), or all"},
            "only": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}},
                               {"type": "null"}], "default": None,
                     "description": "run only these studies, whatever their scale"},
            "runs_root": {"type": "string", "default": "results/runs"},
            "plugins": plugins,
            "gpus_per_job": {"type": "integer", "minimum": 0, "maximum": MAX_GPUS_PER_JOB,
                             "default": 0,
                             "description": "GPUs each workflow job asks for (the `gpu` "
                                            "resource); 0 on CPU-only machines"},
            "studies": {"type": "object", "additionalProperties": study},
        },
        "$defs": {"methods": method_schemas},
    }
