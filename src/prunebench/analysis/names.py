"""The names the analysis shows: the figure names (`PLOTS`), the values of the `recovery`
and `control` columns, and the reading of run records written before `control` existed
(`normalise_legacy_record`). The series name a result is shown under ("mag+distill",
"lottery_reinit") is composed by `prunebench.labels.series_name`, the one place for it,
re-exported here; nothing in the analysis parses a name back.

Plain Python only (no pandas, matplotlib or torch): the Snakemake process imports `PLOTS`
from here to name the plot rule's outputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from prunebench.errors import ConfigError
from prunebench.labels import DISTILL_SUFFIX, REINIT_SUFFIX, series_name

__all__ = ["BUDGET_PLOTS", "CONTROLS", "DENSE_LABEL", "PLOTS", "plot_names", "RECOVERIES", "check_kind",
           "normalise_legacy_record", "series_name"]

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
# side at equal cost. The workflow lists it for the studies that declare budgets.
BUDGET_PLOTS = ("equal_cost",)


def plot_names(has_budgets: bool) -> tuple[str, ...]:
    """The figures of a study, in output order."""
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
