"""Plugins: the user's own models, datasets and methods, without forking prunebench.

A plugin is Python code that registers entries when it is imported:
`@register_model("my_net")`, `register_dataset(image_folder("my_data", ...))`,
`@register_method("my_method", ...)`. Three ways in, imported in this order:

1. installed packages that declare an entry point in the group `prunebench.plugins`
   (`[project.entry-points."prunebench.plugins"] my_pkg = "my_pkg.prunebench_plugin"`),
   sorted by entry-point name;
2. `plugins:` at the top of the params file;
3. `plugins:` of each study, in the file's order.

Each item of a `plugins:` list is an importable module name (`my_pkg.plugin`) or a `.py` file
inside the project (`plugins/my_method.py`, relative to the project root). Every process that
plans or runs jobs parses the params file through `prunebench.study.validate_params`, which
loads the plugins first: the Snakemake process, every CLI verb, the job server's forks and
SLURM jobs; so all of them import the same plugins in the same order.

A plugin's identity is the SHA-256 of its source: its own file (or package) and every module
inside the project it uses (`project_sources`); an installed package's plugin is hashed by
its files. Entries remember the plugin that registered them
(`Registry.origin`), and the runs that use an entry carry that identity in their
description (`identity`), so editing a plugin reruns exactly what depends on it. A missing or
failing plugin is refused at parse time with one line naming its key.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunebench.errors import ConfigError
from prunebench.project import installed, project_importable
from prunebench.registry import registering_from

ENTRY_POINT_GROUP = "prunebench.plugins"


@dataclass(frozen=True)
class Plugin:
    """A loaded plugin: the name it was declared by, its module and its content hash."""

    name: str
    module: str
    sha256: str

    def identity(self) -> dict[str, str]:
        return {"name": self.name, "sha256": self.sha256}


_LOADED: dict[str, Plugin] = {}  # by declared name, in import order


def loaded() -> list[Plugin]:
    """The plugins this process has imported, in order."""
    return list(_LOADED.values())


def source_hash(paths: Sequence[Path]) -> str:
    """SHA-256 over the files' relative names and contents (sorted)."""
    digest = hashlib.sha256()
    root = Path(paths[0]).parent if len(paths) == 1 else Path(_common_root(paths))
    for path in sorted(paths):
        digest.update(str(Path(path).relative_to(root)).encode() + b"\0")
        digest.update(Path(path).read_bytes() + b"\0")
    return digest.hexdigest()


def _common_root(paths: Sequence[Path]) -> str:
    import os

    return os.path.commonpath([str(Path(p).parent) for p in paths])


def module_sources(module: Any) -> list[Path]:
    """The source files of a module: its file, or every .py file of a package."""
    file = getattr(module, "__file__", None)
    if file is None:
        return []
    path = Path(file)
    if path.name == "__init__.py":
        return sorted(p for p in path.parent.rglob("*.py") if "__pycache__" not in p.parts)
    return [path]


def _import_file(name: str, key: str, root: Path):
    path = Path(name)
    if path.is_absolute() or ".." in path.parts:
        raise ConfigError(f"{key}: plugin file {name!r} must be a relative path inside the "
                          "project")
    full = (root / path).resolve()
    if not full.is_file():
        raise ConfigError(f"{key}: plugin file {name!r} not found (relative to {root})")
    module_name = "prunebench_plugin_" + hashlib.sha256(str(full).encode()).hexdigest()[:12]
    if module_name in sys.modules:
        return sys.modules[module_name]
    project_importable(root)  # its own imports of project modules work in every process
    spec = importlib.util.spec_from_file_location(module_name, full)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def project_sources(module: Any, root: Path | None = None) -> list[Path]:
    """The source files inside the project that `module` is made of: its own, and those of
    every project module it uses, followed through their globals (modules imported, and
    the modules that defined the functions and classes imported). Installed packages and
    prunebench itself are left out (a package's identity is its version)."""
    root = (Path.cwd() if root is None else Path(root)).resolve()
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        mod = todo.pop()
        file = getattr(mod, "__file__", None)
        name = getattr(mod, "__name__", "")
        if (file is None or name in seen or name == "prunebench"
                or name.startswith("prunebench.") or installed(Path(file))
                or root not in Path(file).resolve().parents):
            continue
        seen[name] = Path(file).resolve()
        for value in list(vars(mod).values()):
            if isinstance(value, types.ModuleType):
                todo.append(value)
            else:
                owner = sys.modules.get(getattr(value, "__module__", None) or "")
                if owner is not None:
                    todo.append(owner)
    return sorted(set(seen.values()))


def _rollback(plugin: Plugin) -> None:
    """Remove what a plugin that failed on import had registered before it failed."""
    from prunebench.data import DATASETS
    from prunebench.models import MODELS
    from prunebench.pruning import METHODS

    for registry in (MODELS, DATASETS, METHODS):
        registry.unregister_from(plugin)


def load(name: str, key: str, root: Path | None = None) -> Plugin:
    """Import one plugin (a module name, or a `.py` file relative to `root`, the project
    root), registering what it registers; a plugin already loaded is not imported again."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{key} must be a module name or a .py file, got {name!r}")
    if name in _LOADED:
        return _LOADED[name]
    # The package's own entries first, outside the block: a plugin that is the first to
    # import prunebench.pruning must not be credited with the built-in methods.
    import prunebench.data  # noqa: F401
    import prunebench.models  # noqa: F401
    import prunebench.pruning  # noqa: F401

    plugin = Plugin(name, "", "")  # the origin its registrations record (hash filled below)
    root = Path.cwd() if root is None else Path(root)
    try:
        with registering_from(plugin):
            if name.endswith(".py"):
                module = _import_file(name, key, root)
            else:
                project_importable(root)
                module = importlib.import_module(name)
    except BaseException as err:
        _rollback(plugin)
        if isinstance(err, ConfigError):
            raise
        if isinstance(err, ModuleNotFoundError):
            raise ConfigError(f"{key}: cannot import plugin {name!r}: {err}") from None
        if isinstance(err, Exception):  # anything a user's module raises on import
            raise ConfigError(f"{key}: plugin {name!r} failed on import: "
                              f"{type(err).__name__}: {err}") from None
        raise
    sources = project_sources(module, root) or module_sources(module)
    sha = source_hash(sources) if sources else hashlib.sha256(name.encode()).hexdigest()
    # Fill in the record the registrations already point at (frozen: set once, here).
    object.__setattr__(plugin, "module", module.__name__)
    object.__setattr__(plugin, "sha256", sha)
    _LOADED[name] = plugin
    return plugin


def entry_point_plugins() -> list[Plugin]:
    """Import the plugins installed packages declare (group `prunebench.plugins`)."""
    from importlib.metadata import entry_points

    out = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        out.append(load(ep.value.split(":")[0], f"entry point {ep.name!r} "
                                                f"(group {ENTRY_POINT_GROUP})"))
    return out


def load_all(declared: Any, key: str, root: Path | None = None, *,
             entry_points: bool = True) -> list[Plugin]:
    """The installed packages' plugins (unless `entry_points` is false), then the `declared`
    list (the value of `key`)."""
    if declared is None:
        declared = []
    if isinstance(declared, str) or not isinstance(declared, (list, tuple)):
        raise ConfigError(f"{key} must be a list of module names or .py files, got "
                          f"{declared!r}")
    plugins = entry_point_plugins() if entry_points else []
    for i, name in enumerate(declared):
        plugins.append(load(name, f"{key}[{i}]", root))
    return plugins


def identity(*origins: Any) -> dict[str, str]:
    """`{plugin name: sha256}` of the plugins among `origins` (None: the package's own);
    empty when none, so runs of built-in entries keep their names."""
    return {o.name: o.sha256 for o in origins if isinstance(o, Plugin)}


__all__ = ["ENTRY_POINT_GROUP", "Plugin", "identity", "load", "load_all", "loaded"]
