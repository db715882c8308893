"""Which source decides a run's result, and its hash: how stale runs are found.

A run's name is the hash of its configuration, so a run made before a fix to, say, SNIP's
scoring has the same name as one made after it. Renaming every run on every commit would
throw away all results for a typo fix; so instead each run records the hash of the source
files that decide its result (`record`), and `prunebench status` lists the finished runs
whose recorded hash differs from what today's code gives. A change that should rename runs
is declared by bumping the method's `version` (`prunebench.pruning.base.PruningMethod`).

The files, per run (`files`), and why:
- its stage's module (`prunebench/stages/<stage>.py`): what the run does with its parents
  (how a pruned model recovers, how a lottery level rewinds, what a benchmark measures); a
  rewind run's is `stages/rewind.py`, whose imports bring in `stages/lottery.py` (the
  rewinding it shares with lottery levels) and `stages/train.py` (the runs of pruning during
  training, whose masks it rewinds) besides a fine-tuning run's modules
  (`stages/recover.py` and its imports), whose record has none of those three;
- for a run that calls its method (pruning, pruning during training, a method's own
  pretraining, lottery levels, sensitivity sweeps: `METHOD_STAGES`), the method's module
  (the file of the function registered as the method) and the mask code every masked method
  goes through (`pruning/mask.py`), or for a structured method the channel surgery
  (`structured/`);
- the executor, evaluation and the parameter and MAC counts (`ALWAYS`): every run's
  numbers go through them;
- the training package (`training/`: loop, engine, schedule, distillation, stacked
  training) for every run that trains: all but sensitivity sweeps, one-step pruning and
  benchmarks, whose numbers come from the `metrics/` package (and `export.py`, the ONNX
  export and ONNX Runtime session of the benchmark's onnxruntime mode);
- the model's module (the registry factory's file, or the user's factory file) and the
  weight initialisation (`models/init.py`);
- the dataset's code: the module of its entry (built-in datasets, or the file-dataset
  loaders) and of its raw loader (a plugin's file for a plugin's dataset), and batching
  (`data/batching.py`, `data/streaming.py`: the order of the training batches);
- and the package modules that the stage, method, model and dataset modules import
  themselves (lottery's magnitude scores, ERK's layer budgets, the scope of prunable
  layers, ...), except bookkeeping modules that decide no number (`BOOKKEEPING`).
Parent runs are not hashed here: a run whose parent is stale is reported as depending on it.

The hash of a file is of its Python tokens without comments, blank lines and docstrings
(expression statements that are only a string), so a reworded comment marks nothing stale;
any other edit does, even one that computes the same thing (it is then reported, never
silently reused, and `prunebench rerun` redoes it on request).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import io
import json
import os
import tokenize
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prunebench.runs import Run

PACKAGE_DIR = Path(__file__).resolve().parent
# The stages whose runs call their method's code (pruning, pruning during training or a
# method's own pretraining, lottery levels); recovery, sensitivity and benchmark runs only
# read what a pruned parent made, so a change there reaches them as their parent's.
METHOD_STAGES = ("prune", "train", "lottery", "sensitivity")
# Modules every run's numbers go through: the executor (how a run is trained, measured and
# saved), evaluation and the counts every metrics.json holds.
ALWAYS = ("executor.py", "training/evaluate.py", "metrics/size.py", "metrics/macs.py")
# Package modules that only name, read, write or validate things: a root module importing
# them does not make them part of what decides its numbers.
BOOKKEEPING = {"__init__.py", "registry.py", "errors.py", "options.py", "config.py", "io.py",
               "runs.py", "specs.py", "context.py", "labels.py", "plugins.py", "project.py",
               "devices.py"}
_SKIPPED = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}


def _package_files(sub: str) -> list[Path]:
    return sorted((PACKAGE_DIR / sub).glob("*.py"))


def _module_file(obj: Any) -> Path | None:
    try:
        path = inspect.getsourcefile(obj)
    except TypeError:
        return None
    return Path(path).resolve() if path else None


def files(run: Run) -> list[Path]:
    """The source files that decide `run`'s result (see the module docstring)."""
    from prunebench.data import DATASETS
    from prunebench.models import MODELS, resolve_factory
    from prunebench.pruning import METHODS
    from prunebench.stages import STAGES

    roots: set[Path | None] = set()  # their direct package imports count too
    if run.stage in STAGES:
        roots.add(_module_file(type(STAGES[run.stage])))
    method = run.meta.get("method")
    found: set[Path | None] = {PACKAGE_DIR / name for name in ALWAYS}
    if method in METHODS and run.stage in METHOD_STAGES:
        entry = METHODS.get(method)
        roots.add(_module_file(entry.fn))
        found.update(_package_files("structured") if entry.structured
                     else [PACKAGE_DIR / "pruning" / "mask.py"])
    if run.stage == "benchmark":
        found.update(_package_files("metrics"))
        found.add(PACKAGE_DIR / "export.py")  # the onnxruntime mode's exporter and session
    elif _trains(run):
        found.update(_package_files("training"))
    model = _find(run.description, "model")
    if model is not None:
        get = model.get if isinstance(model, Mapping) else lambda k: getattr(model, k, None)
        factory, name = get("factory"), get("name")
        if factory:
            roots.add(_module_file(resolve_factory(factory)))
        elif name in MODELS:
            roots.add(_module_file(MODELS.get(name)))
        found.add(PACKAGE_DIR / "models" / "init.py")
    data = run.meta.get("data") or {}
    if data.get("name") in DATASETS:
        entry = DATASETS.get(data["name"])
        roots.add(_module_file(type(entry)))
        loader = getattr(entry, "load_raw", None)
        if loader is not None:
            roots.add(_module_file(inspect.unwrap(loader)))
        found.update(PACKAGE_DIR / "data" / name for name in ("batching.py", "streaming.py"))
    roots.discard(None)
    found |= roots
    for root in roots:
        found |= _direct_imports(root)
    return sorted(p for p in found if p is not None and p.is_file())


def _direct_imports(path: Path) -> frozenset[Path]:
    """The package modules `path` imports itself (at module level or in a function; not
    for type checking only), other than packages' `__init__` and the bookkeeping modules
    that decide no number (`BOOKKEEPING`)."""
    stat = os.stat(path)
    return _direct_imports_cached(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _direct_imports_cached(path: str, size: int, mtime_ns: int) -> frozenset[Path]:
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return frozenset()
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and "TYPE_CHECKING" in ast.unparse(node.test) for stmt in node.body
               for n in ast.walk(stmt)}
    here = Path(path).resolve()
    package = here.parent if here.is_relative_to(PACKAGE_DIR) else None
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level and package is not None:
                base = package
                for _ in range(node.level - 1):
                    base = base.parent
                rel = ".".join(base.relative_to(PACKAGE_DIR.parent).parts)
                module = f"{rel}.{node.module}" if node.module else rel
            else:
                module = node.module or ""
            names = [module, *(f"{module}.{a.name}" for a in node.names)]
        for name in names:
            parts = name.split(".")
            if parts[0] != "prunebench" or len(parts) < 2:
                continue
            candidate = PACKAGE_DIR.joinpath(*parts[1:]).with_suffix(".py")
            if candidate.is_file() and candidate.name not in BOOKKEEPING:
                found.add(candidate.resolve())
    return frozenset(found)


def _trains(run: Run) -> bool:
    """Whether making `run` trains a model: all but sensitivity sweeps and one-step pruning
    of a trained or initial model (those only evaluate)."""
    from prunebench.pruning import METHODS

    if run.stage == "sensitivity":
        return False
    if run.stage == "prune" and run.meta.get("method") in METHODS:
        entry = METHODS.get(run.meta["method"])
        return entry.when in ("during_training", "iterative") or entry.rounds is not None
    return True


def _find(description: Mapping[str, Any], key: str) -> Any:
    """`key` in a run's description or, failing that, in its nested parent descriptions."""
    while isinstance(description, Mapping):
        if key in description:
            return description[key]
        description = description.get("parent")
    return None


def display_name(path: Path) -> str:
    """`prunebench/training/loop.py` for the package's files; the project-relative path of a
    user's file (else its absolute path)."""
    path = path.resolve()
    if path.is_relative_to(PACKAGE_DIR):
        return str(Path("prunebench") / path.relative_to(PACKAGE_DIR))
    cwd = Path.cwd().resolve()
    return str(path.relative_to(cwd)) if path.is_relative_to(cwd) else str(path)


def file_hash(path: Path) -> str:
    """The hash of a Python file's code (comments, blank lines and docstrings left out).
    A file of the package is hashed as it was when this process (or the job server it was
    forked from) imported this module: the code that runs, even if the file is edited
    during a long workflow; other files (the user's) as they are now."""
    path = Path(path).resolve()
    data = _AT_IMPORT.get(str(path))
    return _code_hash(data if data is not None else path.read_bytes())


@functools.lru_cache(maxsize=4096)
def _code_hash(data: bytes) -> str:
    digest = hashlib.sha256()
    try:
        tokens = list(tokenize.tokenize(io.BytesIO(data).readline))
    except (tokenize.TokenError, SyntaxError):
        digest.update(data)  # not tokenizable: the bytes themselves
        return digest.hexdigest()[:16]
    kept = [t for t in tokens if t.type not in _SKIPPED]
    for i, tok in enumerate(kept):
        if tok.type == tokenize.STRING and _statement_string(kept, i):
            continue  # a docstring
        text = "" if tok.type in (tokenize.INDENT, tokenize.DEDENT, tokenize.NEWLINE) else tok.string
        digest.update(f"{tok.type}:{text}\n".encode())
    return digest.hexdigest()[:16]


def _statement_string(tokens: list[tokenize.TokenInfo], i: int) -> bool:
    """Whether token i is a string that is a whole statement (a docstring)."""
    before = tokens[i - 1].type if i else tokenize.NEWLINE
    after = tokens[i + 1].type if i + 1 < len(tokens) else tokenize.NEWLINE
    starts = before in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
    return starts and after == tokenize.NEWLINE


def record(run: Run) -> dict[str, Any]:
    """{"hash": ..., "files": {name: hash}}: what a run records of its source."""
    hashes = {display_name(p): file_hash(p) for p in files(run)}
    combined = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:16]
    return {"hash": combined, "files": hashes}


def recorded(metrics: Any) -> dict[str, Any] | None:
    """The source record a run's metrics hold, or None (a run made before it was recorded)."""
    provenance = metrics.get("provenance") if isinstance(metrics, dict) else None
    source = provenance.get("source") if isinstance(provenance, dict) else None
    return source if isinstance(source, dict) and "hash" in source else None


def stale_files(run: Run, source: Mapping[str, Any]) -> list[str] | None:
    """The files changed since `run` recorded `source` (None: its source is today's)."""
    current = record(run)
    return None if source["hash"] == current["hash"] else changed_files(source, current)


def changed_files(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The file names whose hash differs between two records (or that one of them lacks)."""
    old, new = recorded.get("files") or {}, current.get("files") or {}
    return sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))


__all__ = ["changed_files", "display_name", "file_hash", "files", "record", "recorded",
           "stale_files"]


# The package's source as imported (see file_hash): its bytes, read once (~1 MB), hashed
# when asked.
_AT_IMPORT: dict[str, bytes] = {str(p.resolve()): p.read_bytes()
                                for p in PACKAGE_DIR.rglob("*.py")}
