"""Typed, validated configuration and content-addressed run names.

Hyperparameters are frozen dataclasses (as in OpenLTH). A run is named by a hash of its
resolved configuration with default values left out, so identical configs share a directory
(finished work is reused) and adding a field with a no-op default keeps old names valid.

`params.yaml` holds studies; `load_study` resolves one study (plus command-line overrides)
into a `Study`, validating every key before anything runs. The JSON Schema used by the
workflow is generated from these dataclasses (`json_schema`), so the grid is defined once.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prunebench.errors import ConfigError


def _choices(*values: str) -> dict:
    return {"choices": values}


@dataclass(frozen=True)
class DataConfig:
    """Dataset and where its files live."""

    name: str = field(default="digits", metadata={"help": "digits | mnist | fashion_mnist | cifar10 | cifar100"})
    root: str = field(default="data", metadata={"help": "data root in torchvision's layout", "hash": False})
    mirror: str | None = field(default=None, metadata={"help": "local mirror copied from before downloading (env PRUNEBENCH_DATA_MIRROR)", "hash": False})
    download: bool = field(default=True, metadata={"help": "download missing files (checksum-verified)", "hash": False})
    val_size: int | float = field(default=0.1, metadata={"help": "validation split held out from train: fraction in [0,1) or a count"})
    augment: bool | None = field(default=None, metadata={"help": "null = dataset default (crop+flip for CIFAR)"})


@dataclass(frozen=True)
class ModelConfig:
    name: str = field(default="mlp_digits", metadata={"help": "a registered model (prunebench.models)"})


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe (used for dense training and, overridden by `finetune`, for retraining)."""

    epochs: int = field(default=20, metadata={"help": "passes over the training split"})
    batch_size: int = 64
    optimizer: str = field(default="sgd", metadata=_choices("sgd", "adam"))
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = field(default="cosine", metadata=_choices("constant", "step", "cosine"))
    warmup_epochs: float = field(default=0.0, metadata={"help": "linear warm-up length in epochs"})
    milestones: tuple[float, ...] = field(default=(), metadata={"help": "step schedule: epochs where lr *= gamma"})
    gamma: float = 0.1
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class ScopeConfig:
    exclude_first: bool = False
    exclude_last: bool = False


@dataclass(frozen=True)
class MethodEntry:
    """One method of a study. `label` names it in tables; `method` is the registry name."""

    label: str
    method: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class Study:
    name: str
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    finetune: TrainConfig
    scope: ScopeConfig
    methods: tuple[MethodEntry, ...]
    sparsities: tuple[float, ...]
    seeds: tuple[int, ...]
    scale: str = "default"
    calibration_batches: int = 8
    eval_batch_size: int = 1000

    def method(self, label: str) -> MethodEntry:
        for entry in self.methods:
            if entry.label == label:
                return entry
        raise ConfigError(
            f"method {label!r} is not in study {self.name!r} (key studies.{self.name}.methods); "
            f"allowed: {', '.join(e.label for e in self.methods)}"
        )


STUDY_KEYS = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "finetune": None,  # a partial TrainConfig applied on top of `train`
    "scope": ScopeConfig,
    "methods": None,
    "sparsities": None,
    "seeds": None,
    "scale": None,
    "calibration_batches": None,
    "eval_batch_size": None,
}
SCALES = ("default", "paper")
TOP_KEYS = ("scale", "runs_root", "studies")


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is tuple:
        inner = typing.get_args(annotation)[0]
        return isinstance(value, (list, tuple)) and all(_type_ok(v, inner) for v in value)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def from_dict(cls: type, values: Mapping[str, Any] | None, key: str):
    """Build dataclass `cls` from a mapping, naming `key.<field>` in every error."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{key} must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {key}.{unknown[0]}; allowed: {', '.join(fields)}")
    out = {}
    for name, value in values.items():
        if not _type_ok(value, hints[name]):
            raise ConfigError(
                f"{key}.{name} must be {_type_name(hints[name])}, got {value!r}"
            )
        choices = fields[name].metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{key}.{name} must be one of {', '.join(choices)}, got {value!r}")
        if typing.get_origin(hints[name]) is tuple:
            value = tuple(value)
        elif hints[name] is float and value is not None:
            value = float(value)
        out[name] = value
    return cls(**out)


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _positive(value: Any, key: str, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _check_train(t: TrainConfig, key: str) -> None:
    _positive(t.epochs, f"{key}.epochs", allow_zero=True)
    _positive(t.batch_size, f"{key}.batch_size")
    _positive(t.lr, f"{key}.lr")
    _positive(t.weight_decay, f"{key}.weight_decay", allow_zero=True)
    _positive(t.warmup_epochs, f"{key}.warmup_epochs", allow_zero=True)
    if not 0.0 <= t.label_smoothing < 1.0:
        raise ConfigError(f"{key}.label_smoothing must be in [0, 1), got {t.label_smoothing!r}")
    if not 0.0 <= t.momentum < 1.0:
        raise ConfigError(f"{key}.momentum must be in [0, 1), got {t.momentum!r}")


def parse_study(name: str, raw: Mapping[str, Any]) -> Study:
    """Validate one study mapping from params.yaml into a `Study`."""
    # Imported here: the registries pull in torch, which the schema/CLI help do not need.
    from prunebench.data import DATASETS
    from prunebench.models import MODELS
    from prunebench.pruning import METHODS, check_sparsity

    key = f"studies.{name}"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key} must be a mapping")
    unknown = sorted(set(raw) - set(STUDY_KEYS))
    if unknown:
        raise ConfigError(f"unknown key {key}.{unknown[0]}; allowed: {', '.join(STUDY_KEYS)}")
    data = from_dict(DataConfig, raw.get("data"), f"{key}.data")
    if data.name not in DATASETS:
        raise ConfigError(
            f"unknown dataset {data.name!r} (key {key}.data.name); allowed: {', '.join(DATASETS)}"
        )
    if (data.val_size < 0) or (isinstance(data.val_size, float) and data.val_size >= 1.0):
        raise ConfigError(
            f"{key}.data.val_size must be a fraction in [0, 1) or a count >= 0, got {data.val_size!r}"
        )
    model = from_dict(ModelConfig, raw.get("model"), f"{key}.model")
    if model.name not in MODELS:
        raise ConfigError(
            f"unknown model {model.name!r} (key {key}.model.name); allowed: {', '.join(sorted(MODELS))}"
        )
    train = from_dict(TrainConfig, raw.get("train"), f"{key}.train")
    _check_train(train, f"{key}.train")
    finetune_raw = raw.get("finetune") or {}
    from_dict(TrainConfig, finetune_raw, f"{key}.finetune")  # key/type check
    finetune = dataclasses.replace(train, **from_dict_partial(TrainConfig, finetune_raw))
    _check_train(finetune, f"{key}.finetune")
    scope = from_dict(ScopeConfig, raw.get("scope"), f"{key}.scope")

    methods_raw = raw.get("methods") or {}
    if not isinstance(methods_raw, Mapping) or not methods_raw:
        raise ConfigError(f"{key}.methods must be a non-empty mapping of label -> options")
    methods = []
    for label, opts in methods_raw.items():
        opts = dict(opts or {})
        if not isinstance(label, str) or not label.replace("_", "").isalnum():
            raise ConfigError(f"{key}.methods: label {label!r} must be letters, digits and _")
        method_name = opts.pop("method", label)
        try:
            method = METHODS.get(method_name)
        except ConfigError:
            raise ConfigError(
                f"unknown method {method_name!r} (key {key}.methods.{label}); "
                f"allowed: {', '.join(METHODS.names())}"
            ) from None
        try:
            resolved = method.resolve_options(opts)
        except ConfigError as err:
            raise ConfigError(str(err).replace("key methods.", f"key {key}.methods.")) from None
        methods.append(MethodEntry(label, method_name, _freeze(resolved)))

    sparsities = raw.get("sparsities", [0.5, 0.8, 0.9])
    if not isinstance(sparsities, Sequence) or not sparsities:
        raise ConfigError(f"{key}.sparsities must be a non-empty list of numbers in [0, 1)")
    sparsities = tuple(check_sparsity(s, f"{key}.sparsities") for s in sparsities)
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, Sequence) or not seeds or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds
    ):
        raise ConfigError(f"{key}.seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    scale = raw.get("scale", "default")
    if scale not in SCALES:
        raise ConfigError(f"{key}.scale must be one of {', '.join(SCALES)}, got {scale!r}")
    extra = {}
    for k in ("calibration_batches", "eval_batch_size"):
        if k in raw:
            if not isinstance(raw[k], int) or isinstance(raw[k], bool) or raw[k] <= 0:
                raise ConfigError(f"{key}.{k} must be a positive integer, got {raw[k]!r}")
            extra[k] = raw[k]
    return Study(
        name, data, model, train, finetune, scope, tuple(methods), sparsities, tuple(seeds),
        scale, **extra,
    )


def from_dict_partial(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The validated, converted fields of a partial mapping (for overrides on a base config)."""
    full = from_dict(cls, values, "finetune")
    return {k: getattr(full, k) for k in values}


def _freeze(options: Mapping[str, Any]) -> Mapping[str, Any]:
    return types.MappingProxyType(
        {k: tuple(v) if isinstance(v, list) else v for k, v in sorted(options.items())}
    )


# ----------------------------------------------------------------------------- params file


def read_params(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {str(path)!r} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"params file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"params file {str(path)!r} must hold a mapping")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `dotted.key=value` overrides (values parsed as YAML) to a copy of `raw`."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        dotted, value = item.split("=", 1)
        node = raw
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted!r}: {part!r} is not a mapping")
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def validate_params(raw: Mapping[str, Any]) -> dict[str, Study]:
    """Validate the whole params mapping; returns every study by name."""
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"unknown top-level key {unknown[0]!r}; allowed: {', '.join(TOP_KEYS)}")
    scale = raw.get("scale", "default")
    if scale not in (*SCALES, "all"):
        raise ConfigError(f"scale must be one of default, paper, all; got {scale!r}")
    studies = raw.get("studies")
    if not isinstance(studies, Mapping) or not studies:
        raise ConfigError("studies must be a non-empty mapping of study name -> study")
    return {name: parse_study(name, study) for name, study in studies.items()}


def selected_studies(raw: Mapping[str, Any]) -> dict[str, Study]:
    """The studies that `scale` switches on (default: the offline `digits` ones)."""
    studies = validate_params(raw)
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


# ----------------------------------------------------------------------------- hashing


def canonical(obj: Any) -> Any:
    """A JSON-able description: dataclass fields equal to their default are dropped."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            if not f.metadata.get("hash", True):
                continue
            value = getattr(obj, f.name)
            if f.default is not dataclasses.MISSING and value == f.default:
                continue
            out[f.name] = canonical(value)
        return out
    if isinstance(obj, Mapping):
        return {str(k): canonical(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)
    return obj


def config_hash(description: Mapping[str, Any]) -> str:
    text = json.dumps(canonical(description), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- schema


def _schema_for(annotation: Any) -> dict:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_schema_for(a) for a in typing.get_args(annotation)]}
    if origin is tuple:
        return {"type": "array", "items": _schema_for(typing.get_args(annotation)[0])}
    return {
        bool: {"type": "boolean"}, int: {"type": "integer"}, float: {"type": "number"},
        str: {"type": "string"}, type(None): {"type": "null"},
    }.get(annotation, {})


def dataclass_schema(cls: type) -> dict:
    hints = typing.get_type_hints(cls)
    props = {}
    for f in dataclasses.fields(cls):
        prop = _schema_for(hints[f.name])
        if f.default is not dataclasses.MISSING:
            prop["default"] = list(f.default) if isinstance(f.default, tuple) else f.default
        if "choices" in f.metadata:
            prop["enum"] = list(f.metadata["choices"])
        if "help" in f.metadata:
            prop["description"] = f.metadata["help"]
        props[f.name] = prop
    return {"type": "object", "additionalProperties": False, "properties": props}


def json_schema() -> dict:
    """JSON Schema of params.yaml (defaults documented), generated from the dataclasses."""
    train = dataclass_schema(TrainConfig)
    study = {
        "type": "object",
        "additionalProperties": False,
        "required": ["methods"],
        "properties": {
            "data": dataclass_schema(DataConfig),
            "model": dataclass_schema(ModelConfig),
            "train": train,
            "finetune": {**train, "description": "overrides of `train` for retraining after pruning"},
            "scope": dataclass_schema(ScopeConfig),
            "methods": {
                "type": "object",
                "description": "label -> options; `method:` names the registry entry (default: the label)",
                "additionalProperties": {"type": ["object", "null"]},
            },
            "sparsities": {"type": "array", "items": {"type": "number", "minimum": 0, "exclusiveMaximum": 1}, "default": [0.5, 0.8, 0.9]},
            "seeds": {"type": "array", "items": {"type": "integer", "minimum": 0}, "default": [0]},
            "scale": {"enum": list(SCALES), "default": "default"},
            "calibration_batches": {"type": "integer", "minimum": 1, "default": 8},
            "eval_batch_size": {"type": "integer", "minimum": 1, "default": 1000},
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "prunebench params.yaml",
        "type": "object",
        "additionalProperties": False,
        "required": ["studies"],
        "properties": {
            "scale": {"enum": [*SCALES, "all"], "default": "default", "description": "which studies run: default (offline digits), paper, or all"},
            "runs_root": {"type": "string", "default": "results/runs"},
            "studies": {"type": "object", "additionalProperties": study},
        },
    }

