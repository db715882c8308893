"""Typed, validated configuration and content-addressed run names.

Hyperparameters are frozen dataclasses (as in OpenLTH). A run is named by a hash of its
resolved configuration with default values left out, so identical configs share a directory
(finished work is reused) and adding a field with a no-op default keeps old names valid.

This module is a leaf (no registries, no torch): `prunebench.study` parses and validates a
params file into `Study` objects against the method, model and data registries, and
generates the JSON Schema from these dataclasses and the methods' declared options.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
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

    name: str = field(default="digits", metadata={"help": "digits | mnist | fashion_mnist | cifar10 | cifar100, a dataset a plugin registers, or the name of the file dataset `format` describes"})
    format: str | None = field(default=None, metadata={"help": "a file dataset: image_folder (class subfolders of PNG/JPEG) or numpy (.npz or .npy files)", "choices": (None, "image_folder", "numpy")})
    path: str | None = field(default=None, metadata={"help": "with format: the folder or file, relative to the project root", "hash": False})
    options: dict | None = field(default=None, metadata={"help": "with format: the format's options (image_folder: mode, size, mean, std, augment, stream; numpy: num_classes, mean, std, stream); the data's content fingerprint names the runs", "hash": False})
    root: str = field(default="data", metadata={"help": "data root in torchvision's layout", "hash": False})
    mirror: str | None = field(default=None, metadata={"help": "local mirror copied from before downloading (env PRUNEBENCH_DATA_MIRROR)", "hash": False})
    download: bool = field(default=True, metadata={"help": "download missing files (checksum-verified)", "hash": False})
    val_size: int | float = field(default=0.1, metadata={"help": "validation split held out from train: fraction in [0,1) or a count"})
    augment: bool | None = field(default=None, metadata={"help": "null = dataset default (crop+flip for CIFAR)"})


@dataclass(frozen=True)
class CheckpointConfig:
    """Pretrained weights the dense stage starts from instead of a fresh initialisation."""

    path: str = field(metadata={"help": "a state dict saved with torch.save (relative to the project root)", "hash": False})
    sha256: str = field(metadata={"help": "its SHA-256 (checked before loading); names the runs"})


@dataclass(frozen=True)
class ModelConfig:
    name: str | None = field(default="mlp_digits", metadata={"help": "a registered model (prunebench.models, or one a plugin registers)"})
    factory: str | None = field(default=None, metadata={"help": "instead of name: any importable function 'package.module:function' that returns an nn.Module (called with kwargs, plus num_classes and input_shape where it takes them)"})
    kwargs: dict | None = field(default=None, metadata={"help": "constructor arguments passed to the model's factory"})
    checkpoint: CheckpointConfig | None = field(default=None, metadata={"help": "{path, sha256}: start the dense model from these weights (the study's train recipe fine-tunes them; train.epochs: 0 keeps them)"})

    @property
    def label(self) -> str:
        """What tables call the model: its registry name or its factory."""
        return self.name if self.factory is None else self.factory


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe (used for dense training and, overridden by `finetune`, for retraining)."""

    epochs: int = field(default=20, metadata={"help": "passes over the training split"})
    batch_size: int = 64
    optimizer: str = field(default="sgd", metadata=_choices("sgd", "adam"))
    optimizer_impl: str = field(default="fused", metadata={**_choices("fused", "foreach", "forloop"), "help": "torch's implementation of the optimiser step: fused kernels (fastest on CPU), foreach, or the per-parameter loop; part of the run's name, since each rounds differently", "always_hash": True})
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = field(default="cosine", metadata=_choices("constant", "step", "cosine"))
    warmup_epochs: float = field(default=0.0, metadata={"help": "linear warm-up length in epochs"})
    milestones: tuple[float, ...] = field(default=(), metadata={"help": "step schedule: epochs where lr *= gamma"})
    gamma: float = 0.1
    label_smoothing: float = 0.0
    bn_l1: float = field(default=0.0, metadata={"help": "L1 penalty on BatchNorm scales (network slimming's sparsity training)"})
    compile: str = field(default="off", metadata={**_choices("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune"), "help": "torch.compile the training step (prunebench.training.execution): off (eager); default (inductor: fused kernels); reduce-overhead (inductor, replayed as CUDA graphs on a GPU: a step is a few launches); max-autotune-no-cudagraphs (inductor, autotuned kernels, long compiles); max-autotune (both). Compiled are the forward pass and loss with their backward, and the mask re-application; the optimiser step is optimizer_impl's. Changes rounding, so part of the run's name"})
    precision: str = field(default="fp32", metadata={**_choices("fp32", "bf16"), "help": "fp32, or bf16: the forward pass and loss under bfloat16 autocast, with float32 weights, gradients and optimiser state (CUDA from compute capability 8.0, or CPU)"})
    channels_last: bool = field(default=False, metadata={"help": "conv nets: weights and 4-d input batches in channels-last memory layout during training (faster convolutions on CUDA tensor cores); same values, different rounding"})


@dataclass(frozen=True)
class ScopeConfig:
    exclude_first: bool = False
    exclude_last: bool = False


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation (Hinton et al. 2015) from the dense model of the same seed."""

    temperature: float = field(default=4.0, metadata={"help": "softmax temperature T (> 0); the soft term is scaled by T^2"})
    alpha: float = field(default=0.9, metadata={"help": "weight of the soft (teacher) term in [0, 1]; 1 - alpha on the labels"})


@dataclass(frozen=True)
class RewindConfig:
    """Rewinding as a recovery (`recover: [rewind]`; Frankle & Carbin 2019's one-shot
    tickets): a pruned network's mask retrained with the full `train` recipe from the dense
    run's weights at `iteration`."""

    iteration: int = field(default=0, metadata={"help": "iteration of the dense run whose weights the mask's survivors rewind to (>= 0): 0 is its initialisation, k > 0 late rewinding (Frankle et al. 2020), trained from iteration k to the end of the train recipe"})
    reinit_control: bool = field(default=False, metadata={"help": "also train every rewound mask from a fresh random initialisation (the control, `control` column 'reinit')"})


@dataclass(frozen=True)
class BenchmarkConfig:
    """What the benchmark stage measures for every result run (prunebench.metrics)."""

    batch_sizes: tuple[int, ...] = field(default=(1, 128), metadata={"help": "latency is measured at each batch size"})
    min_time_s: float = field(default=0.5, metadata={"help": "each latency measurement repeats for at least this long (and >= 20 times)"})
    modes: tuple[str, ...] = field(default=("dense", "dense_fp16", "sparse_csr", "semi_structured_2_4"), metadata={"help": "execution modes; a mode that cannot run on the device or model is skipped with the reason recorded"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present), cpu or cuda; the record names the device that measured it (set cpu or cuda to keep measurements of both)", "choices": ("auto", "cpu", "cuda")})


@dataclass(frozen=True)
class StackConfig:
    """Stacked training (`prunebench.training.stacked`): how a job trains several grid points
    of one architecture and recipe as one batched model. Which runs share a stack is fixed by
    the plan, so the same params always give the same stacks (and the same bits)."""

    max_members: int = field(default=8, metadata={"help": "most grid points trained as one stack; 1 trains every run alone"})
    memory_mb: int = field(default=2048, metadata={"help": "memory budget of one stack on its device (MiB); a stack that would not fit trains in smaller parts"})


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
    # Structured methods are asked for the fraction of channels to remove, not of weights.
    channel_sparsities: tuple[float, ...] = (0.25, 0.5, 0.75)
    recover: tuple[str, ...] = ("finetune",)
    distill: DistillConfig = DistillConfig()
    rewind: RewindConfig = RewindConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    # Torch CPU threads of every job: float reductions, and so results, depend on it.
    threads: int = 1
    stack: StackConfig = StackConfig()
    # CPU code path of every job (prunebench.determinism): native or portable.
    determinism: str = "native"
    # Cost targets every method is asked for besides its sparsities (prunebench.budgets).
    budgets: tuple = ()
    # Published results the study's page compares with (prunebench.papers); not in run names.
    papers: tuple = ()

    def method(self, label: str) -> MethodEntry:
        for entry in self.methods:
            if entry.label == label:
                return entry
        raise ConfigError(
            f"method {label!r} is not in study {self.name!r} (key studies.{self.name}.methods); "
            f"allowed: {', '.join(e.label for e in self.methods)}"
        )


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
            if any(isinstance(v, float) and not math.isfinite(v) for v in value):
                raise ConfigError(f"{key}.{name} must hold finite numbers, got {value!r}")
            value = tuple(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key}.{name} must be a finite number, got {value!r}")
            if hints[name] is float:
                value = float(value)
        out[name] = value
    return cls(**out)


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


# ----------------------------------------------------------------------------- params file


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (the last one would
    silently win: a duplicated method label or study name)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_params(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {str(path)!r} not found")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"params file {str(path)!r} is not valid YAML{where}: {problem}") from None
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


# ----------------------------------------------------------------------------- hashing


def canonical(obj: Any) -> Any:
    """A JSON-able description: dataclass fields equal to their default are dropped (so a
    new option with a default keeps old names valid), except those marked `always_hash`,
    whose default changed what old names meant."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            if not f.metadata.get("hash", True):
                continue
            value = getattr(obj, f.name)
            if (f.default is not dataclasses.MISSING and value == f.default
                    and not f.metadata.get("always_hash")):
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


