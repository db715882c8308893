"""The names the analysis shows: the figure names (`PLOTS`) and which of them a study has
(`figure_names`), the values of the `recovery` and `control` columns, and the reading of run
records written before `control` existed (`normalise_legacy_record`). The series name a
result is shown under ("mag+distill", "lottery_reinit") is composed by
`prunebench.labels.series_name`, the one place for it, re-exported here; nothing in the
analysis parses a name back.

A study has only the figures that say something: no lottery figure without lottery
tickets, no sparsity axis without an unstructured method, no training curves without
training. `figure_names` decides from plain facts; the workflow takes them from what the
study declares, before any training (`prunebench.plan.study_figures`), and `prunebench plot`
without `--figures` from the tables (`prunebench.analysis.plots.drawable_figures`).

Plain Python only (no pandas, matplotlib or torch): the Snakemake process imports the names
from here to name the plot rules' outputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from prunebench.errors import ConfigError
from prunebench.labels import DISTILL_SUFFIX, REINIT_SUFFIX, series_name

__all__ = [
    "BUDGET_PLOTS",
    "CONTROLS",
    "DENSE_LABEL",
    "PLOTS",
    "PLOT_GROUPS",
    "RECOVERIES",
    "check_kind",
    "figure_names",
    "normalise_legacy_record",
    "plot_names",
    "series_name",
]

# The figures drawn per study, in output order: `<study>_<name>.png` (plots.write_plots),
# the report's figure sections and the workflow's plot outputs all follow this tuple.
PLOTS = (
    "accuracy_vs_sparsity",
    "delta_vs_dense",
    "params_remaining",
    "accuracy_vs_params",
    "accuracy_vs_macs",
    "pareto_macs",
    "pareto_latency",
    "training_curves",
    "lottery_tickets",
)

# Drawn only for a study whose runs were asked for budgets (`budgets:`): methods side by
# side at equal cost.
BUDGET_PLOTS = ("equal_cost",)

# The figures by what a study needs for them to say something, each group one rule of the
# workflow (a rule's outputs are fixed, and a study has a whole group or none of it):
# "plot": every study (every method on the measured parameter and MAC axes; the benchmark
# stage measures every result run); "plot_sparsity": a weight-sparsity axis, for a study
# with an unstructured method; "plot_curves": a study that trains (histories);
# "plot_lottery": lottery tickets (a lottery method, or a rewind recovery of a method it
# applies to); "plot_budgets": a study with `budgets:`.
SPARSITY_PLOTS = ("accuracy_vs_sparsity", "delta_vs_dense", "params_remaining")
BENCHMARK_PLOTS = ("pareto_macs", "pareto_latency")
PLOT_GROUPS = {
    "plot": ("accuracy_vs_params", "accuracy_vs_macs", *BENCHMARK_PLOTS),
    "plot_sparsity": SPARSITY_PLOTS,
    "plot_curves": ("training_curves",),
    "plot_lottery": ("lottery_tickets",),
    "plot_budgets": BUDGET_PLOTS,
}


def figure_names(*, unstructured: bool, lottery: bool, curves: bool, budgets: bool,
                 benchmark: bool = True) -> tuple[str, ...]:
    """The figures of a study that has an unstructured method (`unstructured`: the sparsity
    axes), lottery tickets (`lottery`), training histories (`curves`), budget runs
    (`budgets`: the equal-cost figure) and benchmark results (`benchmark`: the Pareto
    figures), in output order; the others would only say that they are empty."""
    left_out = set()
    for has, names in ((unstructured, SPARSITY_PLOTS), (lottery, PLOT_GROUPS["plot_lottery"]),
                       (curves, PLOT_GROUPS["plot_curves"]), (budgets, BUDGET_PLOTS),
                       (benchmark, BENCHMARK_PLOTS)):
        if not has:
            left_out.update(names)
    return tuple(name for name in PLOTS + BUDGET_PLOTS if name not in left_out)


def plot_names(has_budgets: bool) -> tuple[str, ...]:
    """Every figure a study can have, in output order (the equal-cost figure only with
    budgets); which ones a study has says `figure_names`."""
    return PLOTS + BUDGET_PLOTS if has_budgets else PLOTS


DENSE_LABEL = "dense"
RECOVERIES = ("finetune", "distill", "rewind")  # a recovered run's `recovery`; else null
CONTROLS = ("ticket", "reinit")  # a lottery or rewind run's `control`; null for the others
TICKET, REINIT = CONTROLS
DISTILL = "distill"
REWIND = "rewind"


def _given(value: Any) -> Any:
    """None for a missing value: None, or NaN as a null cell reads back from CSV."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def check_kind(label: Any, recovery: Any, control: Any) -> None:
    """Refuse a `recovery` or `control` the analysis does not know (null: None or NaN)."""
    recovery, control = _given(recovery), _given(control)
    if recovery is not None and recovery not in RECOVERIES:
        raise ConfigError(f"recovery {recovery!r} of label {label!r} must be one of "
                          f"{', '.join(RECOVERIES)} or null")
    if control is not None and control not in CONTROLS:
        raise ConfigError(f"control {control!r} of label {label!r} must be one of "
                          f"{', '.join(CONTROLS)} or null")


# Legacy (before `control`): the kind of a lottery run said whether it was a ticket or the
# control, and the control's method was "lottery_reinit".
_LEGACY_CONTROLS = {"lottery": TICKET, "lottery_reinit": REINIT}
_LEGACY_REINIT_METHOD = "lottery_reinit"
_LOTTERY_METHOD = "lottery"


def normalise_legacy_record(record: Mapping[str, Any]) -> dict:
    """A run's `config.json` or job-manifest entry in the current shape.

    Only for run directories and manifests written before runs had a `control` key (they are
    reused, not rerun); a record that has the key is returned unchanged (as a new dict). Those
    older records put the recovery and the lottery control into the label and method: a
    distilled run was labelled "<label>+distill", a lottery control "<label>_reinit" with
    method "lottery_reinit". Here `control` comes from the kind ("lottery" -> "ticket",
    "lottery_reinit" -> "reinit", else null), the method "lottery_reinit" becomes "lottery",
    and the label loses "+distill" only where its own `recovery` is "distill", "_reinit" only
    where its kind is the control's: any other label is left as it is."""
    out = dict(record)
    if "control" in out:
        return out
    kind, label = out.get("kind"), out.get("label")
    control = _LEGACY_CONTROLS.get(kind)
    out["control"] = control
    if out.get("method") == _LEGACY_REINIT_METHOD:
        out["method"] = _LOTTERY_METHOD
    if isinstance(label, str):
        if control == REINIT:
            label = label.removesuffix(REINIT_SUFFIX)
        if _given(out.get("recovery")) == DISTILL:
            label = label.removesuffix(DISTILL_SUFFIX)
        out["label"] = label
    return out
