"""Method options: every bad value is refused when options are resolved (that is, when a study
is parsed), with the full key and what is allowed; good values are converted; run names hash
only the options that differ from their defaults."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunebench.errors import ConfigError
from prunebench.options import Option, positive_int
from prunebench.pruning import METHODS, PruneContext, PruningMethod, Scope, register_method
from prunebench.pruning.magnitude import layer_magnitude
from maskutil import same

NAN, INF = float("nan"), float("inf")

# (method, options, the option the message names ("" = the method's own key), what it allows)
BAD = [
    ("snip", {"batches": 0}, "batches", "an integer in [1, inf]"),
    ("snip", {"batches": 1.5}, "batches", "an integer"),
    ("snip", {"batches": True}, "batches", "an integer"),
    ("snip", {"colour": 1}, "colour", "allowed: batches"),
    ("snip", ["batches", 2], "", "mapping of option -> value"),
    ("wanda", {"batches": 0}, "batches", "an integer in [1, inf]"),
    ("wanda", {"batches": "4"}, "batches", "an integer"),
    ("grasp", {"temperature": -1}, "temperature", "a number in (0, inf]"),
    ("grasp", {"temperature": 0}, "temperature", "a number in (0, inf]"),
    ("grasp", {"temperature": NAN}, "temperature", "finite number"),
    ("grasp", {"temperature": INF}, "temperature", "finite number"),
    ("grasp", {"samples_per_class": 0}, "samples_per_class", "an integer in [1, inf]"),
    ("synflow", {"iterations": 0}, "iterations", "an integer in [1, inf]"),
    ("synflow", {"schedule": "cubic"}, "schedule", "one of exponential, linear"),
    ("synflow", {"input_shape": [3, 0, 32]}, "input_shape[1]", "an integer in [1, inf]"),
    ("synflow", {"input_shape": []}, "input_shape", "at least 1 item"),
    ("synflow", {"input_shape": "3x32x32"}, "input_shape", "a list of an integer"),
    ("gradual_magnitude", {"schedule": "nope"}, "schedule", "one of cubic, linear"),
    ("gradual_magnitude", {"scope": "row"}, "scope", "one of global, layer"),
    ("gradual_magnitude", {"start_epoch": -1}, "start_epoch", "a number in [0, inf] or null"),
    ("gradual_magnitude", {"end_epoch": INF}, "end_epoch", "finite number"),
    ("gradual_magnitude", {"start_epoch": 5, "end_epoch": 2}, "start_epoch", "<= "),
    ("gradual_magnitude", {"frequency": 0}, "frequency", "an integer in [1, inf] or null"),
    ("gradual_magnitude", {"initial_sparsity": 1.0}, "initial_sparsity", "a number in [0, 1)"),
    ("random", {"distribution": "nope"}, "distribution", "one of global, uniform, erk"),
    ("random", {"match": "snip"}, "match", "must be one of global_magnitude"),
    ("random", {"match": "nope"}, "match", "must be one of global_magnitude"),
    ("random", {"match": "random"}, "match", "must be one of global_magnitude"),
    ("random", {"match": "nm"}, "match", "returns a mask at any sparsity"),
    ("random", {"match": "wanda"}, "match", "a data-free method"),
    ("random", {"match": "sensitivity"}, "match", "a data-free method"),
    ("random", {"match": 3}, "match", "a string or null"),
    ("random", {"match": "global_magnitude", "distribution": "erk"}, "match",
     "exclude each other"),
    ("nm", {"n": 5, "m": 4}, "n", "1 <= n < m"),
    ("nm", {"n": 4}, "n", "1 <= n < m"),
    ("nm", {"n": "a"}, "n", "an integer in [1, inf]"),
    ("nm", {"n": 0}, "n", "an integer in [1, inf]"),
    ("nm", {"m": 1}, "m", "an integer in [2, inf]"),
    ("nm", {"score": "taylor"}, "score", "one of magnitude"),
    ("lottery", {"prune_fraction": "abc"}, "prune_fraction", "a number in (0, 1)"),
    ("lottery", {"prune_fraction": 1.0}, "prune_fraction", "a number in (0, 1)"),
    ("lottery", {"prune_fraction": 0}, "prune_fraction", "a number in (0, 1)"),
    ("lottery", {"rewind_iteration": -1}, "rewind_iteration", "an integer in [0, inf]"),
    ("lottery", {"reinit_control": "yes"}, "reinit_control", "true or false"),
    ("lottery", {"criterion": "snip"}, "criterion", "must be one of global_magnitude"),
    ("lottery", {"criterion": "lottery"}, "criterion", "must be one of global_magnitude"),
    ("sensitivity", {"sweep": [0.5, 0.3]}, "sweep", "strictly increasing"),
    ("sensitivity", {"sweep": [0.5, 1.0]}, "sweep[1]", "a number in (0, 1)"),
    ("sensitivity", {"sweep": [0.2, NAN]}, "sweep[1]", "finite number"),
    ("sensitivity", {"sweep": []}, "sweep", "at least 1 item"),
    ("sensitivity", {"sweep": 0.5}, "sweep", "a list of a number in (0, 1)"),
    ("sensitivity", {"max_layer_sparsity": 0}, "max_layer_sparsity", "a number in (0, 1)"),
    ("global_magnitude", {"threshold": 0.1}, "threshold", "allowed: none"),
]


@pytest.mark.parametrize("key", [None, "studies.tiny.methods.my_label"])
@pytest.mark.parametrize("name, options, option, allowed", BAD,
                         ids=[f"{b[0]}-{b[2] or 'mapping'}-{i}" for i, b in enumerate(BAD)])
def test_bad_options_are_refused_with_the_key_and_what_is_allowed(name, options, option,
                                                                  allowed, key):
    full_key = (key or f"methods.{name}") + (f".{option}" if option else "")
    with pytest.raises(ConfigError) as err:
        METHODS.get(name).resolve_options(options, key)
    assert full_key in str(err.value)
    assert allowed in str(err.value)


def test_every_declared_default_passes_its_own_declaration():
    for name in METHODS:
        for option, declared in METHODS.get(name).options.items():
            default = declared.default
            expected = tuple(default) if isinstance(default, list) else default
            assert declared.check(default, f"methods.{name}.{option}") == expected
            assert declared.help, f"methods.{name}.{option} has no help text"


@pytest.mark.parametrize("name, options, converted", [
    ("grasp", {"temperature": 100}, {"temperature": 100.0}),
    ("gradual_magnitude", {"start_epoch": 1, "end_epoch": 3},
     {"start_epoch": 1.0, "end_epoch": 3.0}),
    ("lottery", {"prune_fraction": 0.5, "criterion": "random"},
     {"prune_fraction": 0.5, "criterion": "random"}),
    ("sensitivity", {"sweep": [0.25, 0.5]}, {"sweep": (0.25, 0.5)}),
    ("synflow", {"input_shape": [3, 32, 32]}, {"input_shape": (3, 32, 32)}),
    ("random", {"match": "layer_magnitude"}, {"match": "layer_magnitude"}),
    ("nm", {"n": 1, "m": 8}, {"n": 1, "m": 8}),
])
def test_valid_options_are_converted_and_resolving_again_changes_nothing(name, options, converted):
    method = METHODS.get(name)
    resolved = method.resolve_options(options)
    assert resolved == {**method.defaults, **converted}
    for option, value in converted.items():
        assert type(resolved[option]) is type(value)
    assert method.resolve_options(resolved) == resolved


def test_hashed_options_leave_out_values_equal_to_their_defaults():
    for name in METHODS:
        method = METHODS.get(name)
        assert method.hashed_options(method.resolve_options({})) == {}
    snip, grasp = METHODS.get("snip"), METHODS.get("grasp")
    assert snip.hashed_options(snip.resolve_options({"batches": 1})) == {}
    assert snip.hashed_options(snip.resolve_options({"batches": 2})) == {"batches": 2}
    assert grasp.hashed_options(grasp.resolve_options({"temperature": 200})) == {}
    sensitivity = METHODS.get("sensitivity")
    default_sweep = list(sensitivity.defaults["sweep"])
    assert sensitivity.hashed_options(sensitivity.resolve_options({"sweep": default_sweep})) == {}


def test_adding_an_option_with_a_default_keeps_the_hashed_options():
    declared = {"batches": positive_int(1, "batches")}
    before = PruningMethod("demo", layer_magnitude, "trained", declared)
    after = PruningMethod("demo", layer_magnitude, "trained",
                          {**declared, "scale": Option(1.0, float, "a new option", low=0.0)})
    for options in ({}, {"batches": 3}):
        assert (after.hashed_options(after.resolve_options(options))
                == before.hashed_options(before.resolve_options(options)))


# --- Methods that run inside another get their own default options ----------------------


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 10), nn.ReLU(),
                         nn.Linear(10, 3))


@pytest.fixture
def own_options_method(monkeypatch):
    """A temporary data-free method with an option of its own; records the options it gets."""
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    seen = []

    @register_method("scaled_layer_magnitude", when="trained", options={
        "power": Option(1.0, float, "scores are |w| ** power", low=0.0, low_open=True)})
    def scaled(ctx: PruneContext, sparsity: float):
        seen.append(dict(ctx.options))
        return layer_magnitude(ctx, sparsity)

    return seen


def test_random_match_runs_the_matched_method_with_its_own_defaults(own_options_method):
    model = small_model()
    ctx = PruneContext(model, Scope(), METHODS.get("random").resolve_options(
        {"match": "scaled_layer_magnitude"}))
    mask = METHODS.get("random")(ctx, 0.7)
    assert own_options_method == [{"power": 1.0}]
    layers = {n: int(m.sum()) for n, m in mask.items()}
    reference = layer_magnitude(PruneContext(model), 0.7)
    assert layers == {n: int(m.sum()) for n, m in reference.items()}


def test_lottery_criterion_runs_with_its_own_defaults():
    model = small_model()
    lottery = METHODS.get("lottery")
    options = lottery.resolve_options({"criterion": "random", "prune_fraction": 0.5})
    mask = lottery(PruneContext(model, Scope(), options, torch.Generator().manual_seed(3)), 0.5)
    expected = METHODS.get("random")(
        PruneContext(model, generator=torch.Generator().manual_seed(3)), 0.5)
    assert same(mask, expected)
