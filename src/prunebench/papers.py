"""What a study compares itself with: published numbers and findings it declares.

A study lists, under `papers:`, the results of the paper it reproduces:

    papers:
      - cite: "Lee et al. 2019 (SNIP), LeNet-300-100 on MNIST"
        metric: error          # top1 or error, in percent
        values:                # the paper's numbers at this study's grid points
          - {series: dense, value: 1.7}
          - {series: snip, sparsity: 0.95, value: 1.6}
        claims:                # its findings in words, shown beside the tables and figures
          - "Tickets learn faster than the dense network"

The numbers are the paper's, typed once here; the study's page (`analysis.pages`) puts each
beside this study's mean ± std at the same point and computes the difference, so no sentence
comparing the two is typed by hand. A claim is printed as the paper's, next to the tables and
figures a reader checks it against. Checked when the study is parsed: the series must be one
the study runs, at a sparsity of its grid.

Plain Python (no pandas or torch): the Snakemake process parses studies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prunebench.errors import ConfigError

METRICS = {
    "top1": "test top-1 accuracy (%)",
    "error": "test error (%), 100 − top-1",
}
PAPER_KEYS = ("cite", "url", "metric", "values", "claims")
VALUE_KEYS = ("series", "sparsity", "value")
DENSE = "dense"


@dataclass(frozen=True)
class PaperValue:
    """The paper's `value` (in the paper's metric) for `series` at `sparsity` (None: dense)."""

    series: str
    sparsity: float | None
    value: float


@dataclass(frozen=True)
class Paper:
    cite: str
    metric: str = "top1"
    values: tuple[PaperValue, ...] = ()
    claims: tuple[str, ...] = ()
    url: str | None = None

    def from_top1(self, top1: float) -> float:
        """A top-1 fraction (as the tables hold it) in this paper's metric, in percent."""
        return 100.0 * (1.0 - top1) if self.metric == "error" else 100.0 * top1


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
    return value.strip()


def _value(raw: Any, key: str, series_grid: Mapping[str, Sequence[float]]) -> PaperValue:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key} must be a mapping with keys {', '.join(VALUE_KEYS)}")
    unknown = sorted(set(raw) - set(VALUE_KEYS), key=str)
    if unknown:
        raise ConfigError(f"unknown key {key}.{unknown[0]}; allowed: {', '.join(VALUE_KEYS)}")
    series = _text(raw.get("series"), f"{key}.series")
    if series not in series_grid:
        raise ConfigError(f"{key}.series {series!r} is not run by this study; allowed: "
                          f"{', '.join(series_grid)}")
    value = raw.get("value")
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not 0.0 <= value <= 100.0):
        raise ConfigError(f"{key}.value must be a percentage in [0, 100], got {value!r}")
    sparsity = raw.get("sparsity")
    if series == DENSE:
        if sparsity is not None:
            raise ConfigError(f"{key}.sparsity: the dense model has none")
    else:
        grid = series_grid[series]
        if (isinstance(sparsity, bool) or not isinstance(sparsity, (int, float))
                or not any(math.isclose(sparsity, s, abs_tol=1e-9) for s in grid)):
            raise ConfigError(f"{key}.sparsity must be one of the study's targets for "
                              f"{series!r}: {', '.join(f'{s:g}' for s in grid)}; "
                              f"got {sparsity!r}")
        sparsity = float(sparsity)
    return PaperValue(series, sparsity, float(value))


def parse_papers(raw: Any, key: str, series_grid: Mapping[str, Sequence[float]],
                 ) -> tuple[Paper, ...]:
    """`studies.<s>.papers`, checked. `series_grid` maps each series the study runs to its
    targets ("dense" to none)."""
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise ConfigError(f"{key} must be a list of mappings with keys {', '.join(PAPER_KEYS)}")
    papers = []
    for i, item in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where} must be a mapping with keys {', '.join(PAPER_KEYS)}")
        unknown = sorted(set(item) - set(PAPER_KEYS), key=str)
        if unknown:
            raise ConfigError(f"unknown key {where}.{unknown[0]}; allowed: {', '.join(PAPER_KEYS)}")
        metric = item.get("metric", "top1")
        if metric not in METRICS:
            raise ConfigError(f"{where}.metric must be one of {', '.join(METRICS)}, got {metric!r}")
        values = item.get("values", [])
        claims = item.get("claims", [])
        for name, seq in (("values", values), ("claims", claims)):
            if not isinstance(seq, Sequence) or isinstance(seq, str):
                raise ConfigError(f"{where}.{name} must be a list")
        if not values and not claims:
            raise ConfigError(f"{where}: give the paper's values, its claims, or both")
        parsed = tuple(_value(v, f"{where}.values[{j}]", series_grid)
                       for j, v in enumerate(values))
        points = [(v.series, v.sparsity) for v in parsed]
        if len(set(points)) != len(points):
            raise ConfigError(f"{where}.values gives one point twice")
        url = item.get("url")
        papers.append(Paper(
            cite=_text(item.get("cite"), f"{where}.cite"),
            metric=metric,
            values=parsed,
            claims=tuple(_text(c, f"{where}.claims[{j}]") for j, c in enumerate(claims)),
            url=None if url is None else _text(url, f"{where}.url"),
        ))
    return tuple(papers)


def schema() -> dict:
    """The JSON schema of `papers` (prunebench schema)."""
    return {
        "type": "array", "default": [],
        "description": "published results the study compares with, shown on its page beside "
                       "its own (prunebench.papers)",
        "items": {
            "type": "object", "additionalProperties": False, "required": ["cite"],
            "properties": {
                "cite": {"type": "string", "description": "authors, year, and where in the paper"},
                "url": {"type": "string"},
                "metric": {"enum": list(METRICS), "default": "top1",
                           "description": "; ".join(f"{k}: {v}" for k, v in METRICS.items())},
                "values": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False,
                    "required": ["series", "value"],
                    "properties": {
                        "series": {"type": "string",
                                   "description": "dense, or a series the study runs"},
                        "sparsity": {"type": "number", "description": "one of its targets"},
                        "value": {"type": "number", "minimum": 0, "maximum": 100},
                    }}},
                "claims": {"type": "array", "items": {"type": "string"},
                           "description": "the paper's findings, printed as its words"},
            },
        },
    }
