"""`prunebench compare A B`: did a rerun reproduce a result set? Answered per grid point and
per study in units of the seed standard deviation.

A result set is a `runs.csv` (as `prunebench aggregate` writes it), a study's tables
directory holding one, a results directory holding `studies/<study>/runs.csv`, or the
committed results at a git revision (`git:REV`, optionally `git:REV:PATH`). A grid point is
everything `aggregate` groups a summary row by (`GROUP_KEYS`) except the study; its rows are
its seeds.

Per grid point and metric (test top-1 and loss): the mean of A and of B, their difference
Δ = B − A, the seed standard deviation σ pooled over A and B, and Δ/σ. Where a point has no
spread to pool (one seed in each set, or all seeds equal) σ is the study's median pooled σ,
and the output says so. Per row (a seed of a grid point in both sets): whether top-1 and loss
are bitwise equal. The verdict of a study counts the common grid points whose top-1 is more
than K σ away; more than the allowed number of them is "NOT reproduced" (exit status 1). The
allowed number is --max-outside, else what chance allows (`chance_allowance`). A study whose
top-1 differences lean one way beyond chance (`sign_test`) is not reproduced either: a small
shift of every point stays within K σ at each.
"""

from __future__ import annotations

import io
import math
import statistics
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from prunebench.analysis.aggregate import GROUP_KEYS, target_key, upgrade_legacy_table
from prunebench.analysis.names import series_name
from prunebench.errors import ConfigError
from prunebench.io import atomic_write_json
from prunebench.provenance import COLUMNS as PROVENANCE

METRICS = ("top1", "loss")
VERDICT_METRIC = "top1"  # the headline number of every table; loss is shown beside it
POINT_KEYS = [k for k in GROUP_KEYS if k != "study"]
DEFAULT_SIGMA = 2.0
# Without --max-outside, a study may have as many grid points outside K σ as a faithful
# rerun (the same distribution, fresh seeds) exceeds by chance at most this often: with few
# seeds that is many (two seeds a side put 18 % of the points outside 2 σ, three 7 %).
FALSE_ALARM = 0.01
# A shift of every grid point one way by less than the seed noise leaves each point within
# K σ; the signs of the differences show it (a sign test). Stricter than FALSE_ALARM, as
# the points of a study are not independent (pruned models share their dense parents).
SHIFT_P = 0.001
DEFAULT_ROWS = 10
# How a result set was made, where runs.csv records it (older tables have only the thread
# count and the benchmark's device); each is summarised per set.
PROVENANCE_COLUMNS = (*PROVENANCE, "threads", "device")
DEFAULT_RESULTS = "results"
ACCEPTED = ("give a runs.csv, a study tables dir holding one, a results dir holding "
            "studies/<study>/runs.csv, or git:REV[:PATH]")
LISTED = 5  # grid points named in a verdict line before "and N more"


# ---------------------------------------------------------------- reading result sets


@dataclass
class ResultSet:
    """One side of a comparison: where it came from and its runs, one table per study."""

    spec: str
    source: str
    studies: dict[str, pd.DataFrame] = field(default_factory=dict)


def _read_runs_text(text: str, origin: str) -> pd.DataFrame:
    """A runs table from CSV text, in the current shape (columns older tables lack are
    null; tables written before `control` and `series` are upgraded as `aggregate` does)."""
    try:
        frame = pd.read_csv(io.StringIO(text))
    except pd.errors.EmptyDataError:
        raise ConfigError(f"{origin} is empty: {ACCEPTED}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ConfigError(f"{origin} is not a CSV table ({str(err).splitlines()[0]}): "
                          f"{ACCEPTED}") from None
    missing = [c for c in ("study", "seed", "top1") if c not in frame]
    if missing:
        raise ConfigError(f"{origin} has no {', '.join(missing)} column: compare needs a "
                          "runs.csv written by `prunebench aggregate` (study, seed, top1, loss)")
    if frame.empty:
        raise ConfigError(f"{origin} has no rows")
    for column in ("label", "method", "recovery"):
        if column not in frame:
            frame[column] = math.nan
    if "control" not in frame:
        frame = upgrade_legacy_table(frame)
    elif "series" not in frame:
        frame["series"] = [series_name(lab, _value(rec), _value(con)) for lab, rec, con
                           in zip(frame["label"], frame["recovery"], frame["control"])]
    for column in [*GROUP_KEYS, "loss"]:
        if column not in frame:
            frame[column] = math.nan
    return frame


def _value(x: Any) -> Any:
    """A cell as a plain, hashable Python value: None for a null, float for a number."""
    if x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x)):
        return None
    if isinstance(x, (bool, str)):
        return x
    try:
        number = float(x)
    except (TypeError, ValueError):
        return str(x)
    return None if math.isnan(number) else number


def _split_studies(frame: pd.DataFrame, origin: str, into: dict[str, pd.DataFrame]) -> None:
    for study, rows in frame.groupby(frame["study"].map(str), sort=True):
        if study in into:
            raise ConfigError(f"study {study!r} appears twice in one result set (again in "
                              f"{origin}): give one runs.csv per study")
        into[study] = rows.reset_index(drop=True)


def _locate(root: str, is_file: bool, names: Iterable[str]) -> list[str]:
    """The runs.csv files a result-set path names: itself, `<root>/runs.csv`, or each
    `<root>/studies/<study>/runs.csv` (`names`: the files under `root`, relative to it)."""
    if is_file:
        return [root]
    names = set(names)
    if "runs.csv" in names:
        return [f"{root}/runs.csv"]
    return sorted(f"{root}/{n}" for n in names
                  if len(parts := n.split("/")) == 3 and parts[0] == "studies"
                  and parts[2] == "runs.csv")


def _path_set(spec: str, path: Path) -> ResultSet:
    if not path.exists():
        raise ConfigError(f"result set {spec!r} does not exist: {ACCEPTED}")
    names = [] if path.is_file() else [str(p.relative_to(path).as_posix())
                                       for p in [path / "runs.csv",
                                                 *path.glob("studies/*/runs.csv")]
                                       if p.is_file()]
    files = _locate(str(path), path.is_file(), names)
    if not files:
        raise ConfigError(f"result set {spec!r} holds no runs.csv: {ACCEPTED}")
    out = ResultSet(spec, str(path))
    for name in files:
        try:
            text = Path(name).read_text()
        except UnicodeDecodeError:
            raise ConfigError(f"{name!r} is not a text table: {ACCEPTED}") from None
        _split_studies(_read_runs_text(text, repr(name)), repr(name), out.studies)
    return out


def _git(top: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(top), *args], capture_output=True,
                              encoding="utf-8", errors="replace", check=False)
    except FileNotFoundError:
        raise ConfigError("git:REV result sets need the `git` program, which is not "
                          "installed") from None


def repo_root(cwd: Path | None = None) -> Path | None:
    """The top of the git work tree holding `cwd` (default: the working directory)."""
    try:
        done = subprocess.run(["git", "-C", str(cwd or Path.cwd()), "rev-parse",
                               "--show-toplevel"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None
    return Path(done.stdout.strip()) if done.returncode == 0 else None


def _in_repo(path: Path, top: Path) -> str | None:
    """`path` relative to the work tree's top, or None when it lies outside."""
    try:
        return path.resolve().relative_to(top.resolve()).as_posix()
    except ValueError:
        return None


def _git_set(spec: str, same_as: str | None, default: str) -> ResultSet:
    """The runs tables committed at a revision: under PATH of `git:REV:PATH`, else under
    `same_as` (the other set's path in the repository) where that is committed at REV, else
    under `default` (the results dir, relative to the top of the work tree)."""
    rev, _, path = spec[len("git:"):].partition(":")
    if not rev:
        raise ConfigError(f"result set {spec!r} names no revision: give git:REV or "
                          "git:REV:PATH (e.g. git:HEAD, git:main~3:results)")
    top = repo_root()
    if top is None:
        raise ConfigError(f"result set {spec!r} needs a git repository, and {str(Path.cwd())!r}"
                          " is not in one")
    sha = _git(top, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").stdout.strip()
    if not sha:
        raise ConfigError(f"result set {spec!r}: {rev!r} is not a commit of the repository "
                          f"at {str(top)!r} (give a commit, branch or tag: git:HEAD, "
                          "git:main~3)")
    where = f"{rev} ({sha[:7]})"

    def kind_of(candidate: str) -> str:
        return _git(top, "cat-file", "-t", f"{sha}:{candidate}").stdout.strip()

    if not path and same_as and kind_of(same_as) in ("blob", "tree"):
        path = same_as
    path = (path or default).strip("/") or "."
    kind = kind_of(path)
    if kind not in ("blob", "tree"):
        raise ConfigError(f"result set {spec!r}: {path!r} is not committed at {where}: "
                          f"{ACCEPTED}")
    names = []
    if kind == "tree":
        listed = _git(top, "ls-tree", "-r", "--name-only", "--full-tree", sha, "--",
                      f"{path}/" if path != "." else ".").stdout.splitlines()
        prefix = "" if path == "." else f"{path}/"
        names = [n[len(prefix):] for n in listed if n.startswith(prefix)]
    files = _locate(path, kind == "blob", names)
    if not files:
        raise ConfigError(f"result set {spec!r}: {path!r} at {where} holds no runs.csv: "
                          f"{ACCEPTED}")
    out = ResultSet(spec, f"git:{where} {path}")
    for name in files:
        name = name.removeprefix("./")
        origin = f"{name!r} at {where}"
        shown = _git(top, "cat-file", "blob", f"{sha}:{name}")
        if shown.returncode != 0:
            raise ConfigError(f"{origin} cannot be read: {shown.stderr.strip().splitlines()[0]}")
        _split_studies(_read_runs_text(shown.stdout, origin), origin, out.studies)
    return out


def default_results(top: Path | None) -> Path:
    """The working tree's results dir: `results/` of the working directory where it has one,
    else at the top of the git work tree."""
    here = Path.cwd() / DEFAULT_RESULTS
    return here if here.is_dir() or top is None else top / DEFAULT_RESULTS


def read_result_sets(spec_a: str, spec_b: str | None) -> tuple[ResultSet, ResultSet]:
    """Both sides of a comparison. B defaults to the working tree's results dir
    (`default_results`); a git side reads the other side's path as committed, where that is
    in the repository at the revision, else the results dir's."""
    top = repo_root()
    results = default_results(top)
    if spec_b is None:
        spec_b = str(results)
    sets = []
    for spec, other in ((spec_a, spec_b), (spec_b, spec_a)):
        if spec.startswith("git:"):
            same_as = None if other.startswith("git:") or top is None \
                else _in_repo(Path(other), top)
            default = (_in_repo(results, top) if top is not None else None) or DEFAULT_RESULTS
            sets.append(_git_set(spec, same_as, default))
        else:
            sets.append(_path_set(spec, Path(spec)))
    return sets[0], sets[1]


# ---------------------------------------------------------------- comparing


@dataclass
class _Row:
    point: tuple
    seed: Any
    values: dict[str, float]
    weights: str | None = None  # the model's SHA-256, where runs.csv records it


# runs.csv's digest of a run's model.pt (from its checksums.json): a row is bit-identical
# only if its weights are too, where both sets record them.
WEIGHTS = "weights_sha256"


def _rows(frame: pd.DataFrame) -> list[_Row]:
    # Plain lists: a Series would turn the None of a null back into NaN, and NaN != NaN.
    keys = [[_value(v) for v in frame[c]] for c in POINT_KEYS]
    seeds = [int(s) if isinstance(s, float) and s.is_integer() else s
             for s in map(_value, frame["seed"])]
    metrics = {m: [_value(v) for v in frame[m]] for m in METRICS}
    weights = ([w if isinstance(w, str) else None for w in map(_value, frame[WEIGHTS])]
               if WEIGHTS in frame else [None] * len(frame))
    return [_Row(tuple(k[i] for k in keys), seeds[i],
                 {m: math.nan if metrics[m][i] is None or isinstance(metrics[m][i], str)
                  else metrics[m][i] for m in METRICS}, weights[i])
            for i in range(len(frame))]


def _by_point(rows: Sequence[_Row]) -> dict[tuple, list[_Row]]:
    out: dict[tuple, list[_Row]] = {}
    for row in rows:
        out.setdefault(row.point, []).append(row)
    return out


def point_name(point: tuple) -> str:
    """"series@target": "global_magnitude@s0.90", "l1_filter@c0.50" (aggregate's keys)."""
    key = dict(zip(POINT_KEYS, point))
    target, channels = key["target_sparsity"], key["channel_sparsity"]
    if target is None and channels is None:
        return str(key["series"])
    return f"{key['series']}@{target_key(target, channels)}"


def _spread(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sum of squared deviations and degrees of freedom of the non-null values."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan, 0
    mean = math.fsum(values) / len(values)
    return mean, math.fsum((v - mean) ** 2 for v in values), len(values) - 1


def _metric(a: Sequence[float], b: Sequence[float]) -> dict:
    mean_a, ss_a, df_a = _spread(a)
    mean_b, ss_b, df_b = _spread(b)
    df = df_a + df_b
    pooled = math.sqrt((ss_a + ss_b) / df) if df > 0 else math.nan
    return {"mean_a": mean_a, "mean_b": mean_b, "diff": mean_b - mean_a,
            "pooled_std": pooled, "count_a": sum(not math.isnan(v) for v in a),
            "count_b": sum(not math.isnan(v) for v in b)}


def _same(x: float, y: float) -> bool:
    return (math.isnan(x) and math.isnan(y)) or x == y


def _paired(a: Sequence[_Row], b: Sequence[_Row]) -> tuple[int, int, list, list]:
    """Rows matched by seed (the n-th row of a seed with the n-th): (paired, bitwise equal,
    seeds only in A, seeds only in B)."""
    def keyed(rows):
        seen: dict = {}
        out = {}
        for row in rows:
            n = seen[row.seed] = seen.get(row.seed, -1) + 1
            out[(row.seed, n)] = row
        return out

    ka, kb = keyed(a), keyed(b)
    both = [k for k in ka if k in kb]
    equal = sum(all(_same(ka[k].values[m], kb[k].values[m]) for m in METRICS)
                and _same_weights(ka[k].weights, kb[k].weights) for k in both)
    return (len(both), equal, [k[0] for k in ka if k not in kb],
            [k[0] for k in kb if k not in ka])


def _same_weights(x: str | None, y: str | None) -> bool:
    """Equal model digests, or one side does not record them (then the metrics decide)."""
    return x is None or y is None or x == y


def _z(diff: float, sigma: float) -> float:
    if math.isnan(diff):
        return math.nan
    if math.isnan(sigma) or sigma == 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / sigma


def compare_study(study: str, a: pd.DataFrame, b: pd.DataFrame, sigma_k: float,
                  max_outside: int | None) -> dict:
    """One study's comparison: every grid point's numbers, the points only one set has, the
    fallback σ, and the verdict (`status`: bit-identical, reproduced or not-reproduced)."""
    rows_a, rows_b = _rows(a), _rows(b)
    points_a, points_b = _by_point(rows_a), _by_point(rows_b)
    common = [p for p in points_a if p in points_b]
    points = []
    for point in common:
        entry = {"point": point_name(point), "key": dict(zip(POINT_KEYS, point)),
                 "n_a": len(points_a[point]), "n_b": len(points_b[point])}
        for m in METRICS:
            entry[m] = _metric([r.values[m] for r in points_a[point]],
                               [r.values[m] for r in points_b[point]])
        paired, equal, only_a, only_b = _paired(points_a[point], points_b[point])
        entry.update(rows_paired=paired, rows_equal=equal, seeds_only_a=only_a,
                     seeds_only_b=only_b)
        points.append(entry)
    fallback = {}
    for m in METRICS:
        spreads = [p[m]["pooled_std"] for p in points
                   if not math.isnan(p[m]["pooled_std"]) and p[m]["pooled_std"] > 0]
        fallback[m] = statistics.median(spreads) if spreads else math.nan
        for p in points:
            pooled = p[m]["pooled_std"]
            p[m]["sigma_is_fallback"] = math.isnan(pooled) or pooled == 0
            p[m]["sigma"] = fallback[m] if p[m]["sigma_is_fallback"] else pooled
            p[m]["z"] = _z(p[m]["diff"], p[m]["sigma"])
    outside = sorted((p for p in points if abs(p[VERDICT_METRIC]["z"]) > sigma_k),
                     key=lambda p: -abs(p[VERDICT_METRIC]["z"]))
    chances = [_chance_outside(p, sigma_k) for p in points]
    result = {
        "study": study, "sigma_k": sigma_k,
        "allowed_outside": chance_allowance(chances) if max_outside is None else max_outside,
        "allowed_by": "chance" if max_outside is None else "--max-outside",
        "expected_outside": math.fsum(chances),
        "grid_points": len(points), "outside": [p["point"] for p in outside],
        "only_in_a": [point_name(p) for p in points_a if p not in points_b],
        "only_in_b": [point_name(p) for p in points_b if p not in points_a],
        "rows_a": len(rows_a), "rows_b": len(rows_b),
        "rows_paired": sum(p["rows_paired"] for p in points),
        "rows_equal": sum(p["rows_equal"] for p in points),
        "rows_weights": _weights_compared(points_a, points_b),
        "fallback_sigma": fallback,
        "fallback_points": [p["point"] for p in points
                            if any(p[m]["sigma_is_fallback"] for m in METRICS)],
        "sign": sign_test([p[VERDICT_METRIC]["diff"] for p in points]),
        "points": points,
    }
    result["status"], result["verdict"] = _verdict(result, outside)
    return result


def _weights_compared(points_a: Mapping, points_b: Mapping) -> int:
    """How many rows have a model digest on both sides."""
    a = {(r.point, r.seed) for rows in points_a.values() for r in rows if r.weights}
    b = {(r.point, r.seed) for rows in points_b.values() for r in rows if r.weights}
    return len(a & b)


def t_two_sided(t: float, df: int) -> float:
    """P(|T| > t) for Student's t with `df` degrees of freedom (Abramowitz & Stegun 26.7.3-4:
    closed forms for whole `df`; the normal distribution for `df` 0, a known σ)."""
    if df == 0:
        return math.erfc(t / math.sqrt(2))
    theta = math.atan(t / math.sqrt(df))
    cos2, sin = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 0:
        term = total = 1.0
        for k in range(1, df // 2):
            term *= cos2 * (2 * k - 1) / (2 * k)
            total += term
        inside = sin * total
    else:
        term = total = math.cos(theta) if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= cos2 * (2 * k) / (2 * k + 1)
            total += term
        inside = 2 / math.pi * (theta + sin * total)
    return min(1.0, max(0.0, 1.0 - inside))


def _chance_outside(point: Mapping, sigma_k: float) -> float:
    """How often a faithful rerun puts this point's top-1 outside K σ: Δ/σ is Student's t
    times sqrt(1/n_A + 1/n_B), with the pooled σ's degrees of freedom (a fallback σ, pooled
    over the study, counts as known: normal); 0 where σ is unknown."""
    metric = point[VERDICT_METRIC]
    n_a, n_b = metric["count_a"], metric["count_b"]
    if not n_a or not n_b or math.isnan(metric["sigma"]):
        return 0.0
    df = 0 if metric["sigma_is_fallback"] else n_a + n_b - 2
    return t_two_sided(sigma_k / math.sqrt(1 / n_a + 1 / n_b), df)


def chance_allowance(chances: Sequence[float], false_alarm: float = FALSE_ALARM) -> int:
    """The fewest grid points outside that a faithful rerun exceeds with probability at most
    `false_alarm`, the points outside independently with the given chances."""
    count = [1.0]  # count[m]: P(m points outside so far)
    for p in chances:
        count = [(count[m] if m < len(count) else 0.0) * (1 - p)
                 + (count[m - 1] * p if m else 0.0) for m in range(len(count) + 1)]
    above = 1.0
    for m, pm in enumerate(count):
        above -= pm
        if above <= false_alarm:
            return m
    return len(chances)


def sign_test(diffs: Sequence[float]) -> dict:
    """How many differences are below and above zero, and the two-sided sign-test p-value of
    so uneven a split among those that differ (1 when none does)."""
    lower = sum(d < 0 for d in diffs)
    higher = sum(d > 0 for d in diffs)
    n, fewer = lower + higher, min(lower, higher)
    tail = sum(math.comb(n, i) for i in range(fewer + 1)) / 2**n if n else 0.5
    return {"lower_in_b": lower, "higher_in_b": higher, "p": min(1.0, 2 * tail)}


def _sigmas(z: float) -> str:
    return "σ unknown" if math.isinf(z) else f"{z:+.1f}σ"


def _names(names: Sequence[str]) -> str:
    more = f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
    return ", ".join(names[:LISTED]) + more


def _verdict(result: Mapping, outside: Sequence[dict]) -> tuple[str, str]:
    study, n, k = result["study"], result["grid_points"], result["sigma_k"]
    missing = "".join(f"; {len(result[key])} grid point{'s' * (len(result[key]) != 1)} only "
                      f"in {side}: {_names(result[key])}"
                      for key, side in (("only_in_a", "A"), ("only_in_b", "B")) if result[key])
    if not missing and result["rows_equal"] == result["rows_a"] == result["rows_b"]:
        what = ("top-1, loss and weights" if result["rows_weights"] == result["rows_a"]
                else "top-1 and loss; weights not recorded in both sets")
        return "bit-identical", f"{study}: bit-identical (all {result['rows_a']} rows: {what})"
    if n == 0:
        return "not-reproduced", f"{study}: NOT reproduced: no grid point in both sets{missing}"
    listed = _names([f"{p['point']} ({_sigmas(p[VERDICT_METRIC]['z'])})" for p in outside])
    by = "by chance" if result["allowed_by"] == "chance" else "by --max-outside"
    detail = (f"at most {result['allowed_outside']} outside allowed {by}; "
              f"{result['rows_equal']}/{result['rows_paired']} rows bit-identical")
    if len(outside) > result["allowed_outside"]:
        return "not-reproduced", (f"{study}: NOT reproduced: {len(outside)}/{n} grid points "
                                  f"outside {k:g}σ ({detail}): {listed}{missing}")
    within = f"{n - len(outside)}/{n} grid points within {k:g}σ ({detail})"
    if outside:
        within += f"; {len(outside)} outside: {listed}"
    sign = result["sign"]
    if sign["p"] < SHIFT_P:
        way, most = (("lower", sign["lower_in_b"]) if sign["lower_in_b"] > sign["higher_in_b"]
                     else ("higher", sign["higher_in_b"]))
        return "not-reproduced", (
            f"{study}: NOT reproduced: top-1 is {way} in B at {most} of the "
            f"{sign['lower_in_b'] + sign['higher_in_b']} grid points that differ (a shift; "
            f"sign test p = {sign['p']:.1g}), though {within}{missing}")
    return "reproduced", f"{study}: reproduced within noise: {within}{missing}"


def _text(x: Any) -> str:
    """A cell as text, a whole number without ".0" (CSV reads integers with nulls as float)."""
    value = _value(x)
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _provenance(studies: Iterable[pd.DataFrame]) -> dict[str, list[str]]:
    """The distinct values of each provenance column the runs have."""
    out: dict[str, set[str]] = {}
    for frame in studies:
        for column in PROVENANCE_COLUMNS:
            if column in frame:
                out.setdefault(column, set()).update(
                    _text(v) for v in frame[column] if _value(v) is not None)
    return {c: sorted(v) for c in PROVENANCE_COLUMNS if (v := out.get(c))}


def compare(set_a: ResultSet, set_b: ResultSet, sigma_k: float = DEFAULT_SIGMA,
            max_outside: int | None = None, studies: Sequence[str] | None = None) -> dict:
    """The comparison of two result sets: per study (common to both, or those named) its
    verdict and grid points; studies only one set has are listed."""
    if not sigma_k > 0 or math.isinf(sigma_k):
        raise ConfigError(f"--sigma must be a positive number, got {sigma_k}")
    if max_outside is not None and max_outside < 0:
        raise ConfigError(f"--max-outside must be >= 0, got {max_outside}")
    have = f"A has {', '.join(set_a.studies)}; B has {', '.join(set_b.studies)}"
    if studies:
        for name in studies:
            if name not in set_a.studies or name not in set_b.studies:
                raise ConfigError(f"--study {name!r} is not in both result sets ({have})")
        chosen = list(dict.fromkeys(studies))
    else:
        chosen = [s for s in set_a.studies if s in set_b.studies]
        if not chosen:
            raise ConfigError(f"no study is in both result sets {set_a.spec!r} and "
                              f"{set_b.spec!r} ({have})")
    results = [compare_study(s, set_a.studies[s], set_b.studies[s], sigma_k, max_outside)
               for s in chosen]
    return {
        "sigma_k": sigma_k, "max_outside": max_outside, "verdict_metric": VERDICT_METRIC,
        "a": {"spec": set_a.spec, "source": set_a.source,
              "provenance": _provenance(set_a.studies[s] for s in chosen)},
        "b": {"spec": set_b.spec, "source": set_b.source,
              "provenance": _provenance(set_b.studies[s] for s in chosen)},
        "studies_only_in_a": [] if studies else [s for s in set_a.studies
                                                 if s not in set_b.studies],
        "studies_only_in_b": [] if studies else [s for s in set_b.studies
                                                 if s not in set_a.studies],
        "studies": results,
        "reproduced": all(r["status"] != "not-reproduced" for r in results),
    }


# ---------------------------------------------------------------- output


def _num(x: float, fmt: str, scale: float = 1.0) -> str:
    if math.isnan(x):
        return "–"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    return format(x * scale, fmt)


def _table(result: Mapping, rows: int) -> str:
    """The study's grid points, largest |Δ/σ| of top-1 (then loss) first: all those outside
    K σ, and at least `rows` of them (0: all)."""
    def order(p):
        return tuple(-abs(p[m]["z"]) if not math.isnan(p[m]["z"]) else math.inf
                     for m in (VERDICT_METRIC, *[m for m in METRICS if m != VERDICT_METRIC]))

    points = sorted(result["points"], key=lambda p: (*order(p), p["point"]))
    shown = points if rows == 0 else points[:max(rows, len(result["outside"]))]
    lines = []
    for p in shown:
        t, loss = p["top1"], p["loss"]
        lines.append({
            "Grid point": p["point"], "n A/B": f"{p['n_a']}/{p['n_b']}",
            "top-1 A (%)": _num(t["mean_a"], ".2f", 100),
            "top-1 B (%)": _num(t["mean_b"], ".2f", 100),
            "Δ (pp)": _num(t["diff"], "+.2f", 100),
            "σ (pp)": _num(t["sigma"], ".2f", 100) + "*" * t["sigma_is_fallback"],
            "Δ/σ": _num(t["z"], "+.1f"),
            "loss A": _num(loss["mean_a"], ".4f"), "loss B": _num(loss["mean_b"], ".4f"),
            "Δ loss": _num(loss["diff"], "+.4f"),
            "σ loss": _num(loss["sigma"], ".4f") + "*" * loss["sigma_is_fallback"],
            "Δ/σ loss": _num(loss["z"], "+.1f"),
            "bitwise": f"{p['rows_equal']}/{p['rows_paired']}",
        })
    table = pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True,
                                            colalign=("left",) + ("right",) * 12)
    if len(shown) < len(points):
        table += f"\n({len(points) - len(shown)} more grid points within {result['sigma_k']:g}σ)"
    return table


def _fallback_note(result: Mapping) -> str | None:
    if not result["fallback_points"]:
        return None
    top1, loss = result["fallback_sigma"]["top1"], result["fallback_sigma"]["loss"]
    if math.isnan(top1) and math.isnan(loss):
        return ("σ*: no grid point of this study has a seed spread (one seed in each set, or "
                "equal seeds), so σ is unknown: any difference counts as outside.")
    n = len(result["fallback_points"])
    return (f"σ*: {n} grid point{'s' * (n != 1)} {'have' if n != 1 else 'has'} one seed in "
            f"each set or no spread; σ there is the study's median seed std (top-1 "
            f"{_num(top1, '.2f', 100)} pp, loss {_num(loss, '.4f')}).")


def _made_on(side: Mapping) -> str:
    made = side["provenance"]
    if not made:
        return "provenance not recorded"
    parts = []
    for column, values in made.items():
        text = "; ".join(values[:3]) + (f"; +{len(values) - 3} more" if len(values) > 3 else "")
        parts.append(f"{column} {text}")
    return "made on " + ", ".join(parts)


def render(comparison: Mapping, rows: int = DEFAULT_ROWS) -> str:
    """The comparison as text: the two sets, a table per study (bit-identical studies need
    none), the legend, and one verdict line per study at the end."""
    out = [f"A: {comparison['a']['source']}: {_made_on(comparison['a'])}",
           f"B: {comparison['b']['source']}: {_made_on(comparison['b'])}"]
    for key, side in (("studies_only_in_a", "A"), ("studies_only_in_b", "B")):
        if comparison[key]:
            out.append(f"Not compared (only in {side}): {', '.join(comparison[key])}")
    for result in comparison["studies"]:
        out += ["", f"## {result['study']}: {result['grid_points']} grid points in both sets "
                    f"(A {result['rows_a']} rows, B {result['rows_b']} rows)"]
        if result["status"] == "bit-identical":
            continue
        if result["points"]:
            out += ["", _table(result, rows)]
        if note := _fallback_note(result):
            out.append(note)
        for key, side in (("only_in_a", "A"), ("only_in_b", "B")):
            if result[key]:
                out.append(f"Only in {side} ({len(result[key])}): {', '.join(result[key])}")
    if any(r["status"] != "bit-identical" for r in comparison["studies"]):
        allowed = (f"--max-outside {comparison['max_outside']}"
                   if comparison["max_outside"] is not None else
                   "by chance: the most a faithful rerun with fresh seeds exceeds only "
                   f"{FALSE_ALARM:.0%} of the time, given each point's seed counts")
        out += ["", ("Δ = B − A; σ = the seed std pooled over A and B; Δ/σ in those units; "
                     "bitwise: rows (seeds) whose top-1 and loss are bitwise equal, of those in "
                     "both. A study is NOT reproduced when more of its grid points have a "
                     f"top-1 |Δ/σ| above {comparison['sigma_k']:g} than allowed ({allowed}), "
                     "or when its top-1 differences lean one way (sign test p < "
                     f"{SHIFT_P:g}).")]
    out += [""] + [r["verdict"] for r in comparison["studies"]]
    return "\n".join(out) + "\n"


def _jsonable(x: Any) -> Any:
    if isinstance(x, float):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf") if math.isinf(x) else x
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def write_json(comparison: Mapping, path: Path) -> Path:
    """The comparison as JSON (NaN as null, an infinite Δ/σ as "inf"/"-inf")."""
    return atomic_write_json(path, _jsonable(comparison))
