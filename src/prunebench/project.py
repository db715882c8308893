"""The project: the directory prunebench runs from (the working directory), where the
params file, plugins, model files and results live. Imports nothing of prunebench."""

from __future__ import annotations

import sys
from pathlib import Path


def project_importable(root: Path | None = None) -> None:
    """Make modules inside the project (the working directory, or `root`) importable by
    name, as they are when Python runs from there: appended to sys.path, so they never
    shadow installed packages."""
    root = str((Path.cwd() if root is None else Path(root)).resolve())
    if root not in sys.path:
        sys.path.append(root)


def installed(path: Path) -> bool:
    """Whether `path` is inside an installed package (site-packages, the standard library)."""
    import sysconfig

    places = {sysconfig.get_path(k) for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    resolved = path.resolve()
    return any(p and Path(p).resolve() in resolved.parents for p in places)



__all__ = ["installed", "project_importable"]
