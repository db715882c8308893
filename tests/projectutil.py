"""Lay out the workflow in a scratch project, as a clone of the repository has it."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IGNORED = shutil.ignore_patterns("__pycache__")


def copy_workflow_files(dest: Path, source: Path = ROOT) -> Path:
    """Copy the workflow's files from the project at `source` into `dest`: the top-level
    Snakefile, workflow/ (rules, profiles, schemas, scripts, envs) and the `profiles` link
    through which Snakemake finds the default profile. Returns `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "Snakefile", dest / "Snakefile")
    shutil.copytree(source / "workflow", dest / "workflow", ignore=IGNORED)
    link = source / "profiles"
    (dest / "profiles").symlink_to(link.readlink() if link.is_symlink() else "workflow/profiles")
    return dest
