"""The design's promises, checked: config.py is a leaf, every stage has its workflow rule,
and no stage names a particular method."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from prunebench.pruning import METHODS
from prunebench.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]


def test_config_is_a_leaf_that_imports_no_registry_and_no_torch():
    code = ("import sys, prunebench.config; "
            "print(sorted(m for m in sys.modules if m.startswith(('prunebench.', 'torch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['prunebench.config', 'prunebench.errors']"


def test_every_stage_is_one_workflow_rule_of_the_same_name():
    """The workflow's rules, as Snakemake lists them (the stage rules are made in a loop)."""
    pytest.importorskip("snakemake", reason="the workflow extra is not installed")
    snakemake = Path(sys.executable).parent / "snakemake"
    out = subprocess.run([str(snakemake), "--list-rules"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    rules = set(out.split())
    assert set(STAGES) <= rules, set(STAGES) - rules
    assert "download" in rules and "aggregate" in rules


def test_no_stage_or_plan_branches_on_a_method_name():
    sources = [*(ROOT / "src/prunebench/stages").glob("*.py"), ROOT / "src/prunebench/plan.py",
               ROOT / "src/prunebench/cli.py"]
    for source in sources:
        text = source.read_text()
        for name in METHODS.names():
            compared = rf"""(==|!=|\bin)\s*[(\[{{]?\s*["']{name}["']"""
            assert not re.search(compared, text), f"{source.name} branches on {name!r}"
