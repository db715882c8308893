"""At-initialisation methods (SNIP, GraSP, SynFlow) and the ERK random distribution."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunebench.errors import ConfigError
from prunebench.pruning import METHODS, PruneContext, Scope, global_topk_mask, sparsity_report
from prunebench.pruning.erk import erk_densities
from prunebench.pruning.grasp import grasp_scores, hessian_gradient_product, sample_per_class
from prunebench.pruning.mask import apply_mask, keep_count
from prunebench.pruning.snip import snip_scores
from prunebench.pruning.synflow import linearised_copy, round_sparsities, synflow_scores
from maskutil import kept, same, total

N_CLASSES = 3


class RecordingBatches:
    """A ctx.batches callable that counts how often it is called and how many batches it yields."""

    def __init__(self, batches):
        self.batches = batches
        self.calls = 0
        self.yielded = 0

    def __call__(self):
        self.calls += 1

        def gen():
            for batch in self.batches:
                self.yielded += 1
                yield batch

        return gen()


def conv_net(seed: int = 0, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(4, 8, 3, padding=1)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(8))
    layers += [nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(128, N_CLASSES)]
    return nn.Sequential(*layers)


def data(n_batches: int = 3, batch_size: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch_size, 4, 6, 6, generator=g),
         torch.randint(0, N_CLASSES, (batch_size,), generator=g))
        for _ in range(n_batches)
    ]


def nan_batch(batch_size: int = 6):
    x = torch.full((batch_size, 4, 6, 6), float("nan"))
    return x, torch.zeros(batch_size, dtype=torch.long)


# --- SNIP -------------------------------------------------------------------------------


def direct_snip(model, batches, mask=None):
    model = copy.deepcopy(model)
    if mask is not None:
        apply_mask(model, mask)
    weights = Scope().params(model)
    grads = [torch.zeros_like(w) for w in weights.values()]
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        for acc, g in zip(grads, torch.autograd.grad(loss, list(weights.values()))):
            acc += g
    return {n: (g / len(batches) * w.detach()).abs() for (n, w), g in zip(weights.items(), grads)}


def test_snip_score_matches_direct_autograd_and_sparsity_is_exact():
    model, batches = conv_net(), data()
    ctx = PruneContext(model, batches=lambda: iter(batches), options={"batches": 2})
    scores = snip_scores(ctx, 2)
    for name, expected in direct_snip(model, batches[:2]).items():
        torch.testing.assert_close(scores[name], expected)
    mask = METHODS.get("snip")(ctx, 0.7)
    assert same(mask, global_topk_mask(direct_snip(model, batches[:2]), 0.7))
    assert kept(mask) == keep_count(total(mask), 0.7)


def test_snip_keeps_pruned_weights_pruned_and_uses_masked_network():
    model, batches = conv_net(), data()
    previous = METHODS.get("random")(PruneContext(model), 0.4)
    ctx = PruneContext(model, batches=lambda: iter(batches), mask=previous)
    for name, expected in direct_snip(model, batches[:1], previous).items():
        torch.testing.assert_close(snip_scores(ctx, 1)[name], expected)
    mask = METHODS.get("snip")(ctx, 0.8)
    assert all(not (mask[n] & ~previous[n]).any() for n in mask)
    assert kept(mask) == keep_count(total(mask), 0.8)


def test_snip_reads_exactly_the_batches_it_is_given_and_leaves_the_model_alone():
    model = conv_net(batchnorm=True).train()
    state = copy.deepcopy(model.state_dict())
    good = data(1)
    poisoned = RecordingBatches(good + [nan_batch()] * 3)
    mask = METHODS.get("snip")(PruneContext(model, batches=poisoned), 0.5)
    assert poisoned.yielded == 1
    clean = METHODS.get("snip")(PruneContext(model, batches=lambda: iter(good)), 0.5)
    assert same(mask, clean)
    # A second batch would have been read: the poison shows up in the scores.
    ctx = PruneContext(model, batches=RecordingBatches(good + [nan_batch()]))
    assert any(s.isnan().any() for s in snip_scores(ctx, 2).values())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_snip_rejects_bad_batches_option():
    ctx = PruneContext(conv_net(), batches=lambda: iter(data(2)), options={"batches": 3})
    with pytest.raises(ConfigError, match="methods.snip.batches"):
        METHODS.get("snip")(ctx, 0.5)
    ctx = PruneContext(conv_net(), batches=lambda: iter(data(2)), options={"batches": 0})
    with pytest.raises(ConfigError, match="methods.snip.batches"):
        METHODS.get("snip")(ctx, 0.5)


# --- GraSP ------------------------------------------------------------------------------


def smooth_mlp() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, N_CLASSES)).double()


def test_grasp_hessian_gradient_matches_finite_difference():
    model = smooth_mlp()
    g_ = torch.Generator().manual_seed(0)
    x = torch.randn(7, 4, generator=g_, dtype=torch.float64)
    y = torch.randint(0, N_CLASSES, (7,), generator=g_)
    weights = Scope().params(model)
    temperature = 5.0
    g, hg = hessian_gradient_product(model, weights, x, y, F.cross_entropy, temperature, 7)

    def gradient_at(shift: float):
        moved = copy.deepcopy(model)
        moved_weights = Scope().params(moved)
        with torch.no_grad():
            for name, w in moved_weights.items():
                w += shift * g[name]
        loss = F.cross_entropy(moved(x) / temperature, y)
        return dict(zip(moved_weights, torch.autograd.grad(loss, list(moved_weights.values()))))

    eps = 1e-5
    plus, minus = gradient_at(eps), gradient_at(-eps)
    for name in weights:
        finite_difference = (plus[name] - minus[name]) / (2 * eps)
        torch.testing.assert_close(hg[name], finite_difference, rtol=1e-6, atol=1e-12)
        assert hg[name].abs().max() > 1e-6  # not trivially zero

    # Chunking the sample changes nothing without BatchNorm.
    _, hg_chunked = hessian_gradient_product(model, weights, x, y, F.cross_entropy, temperature, 3)
    for name in weights:
        torch.testing.assert_close(hg_chunked[name], hg[name])


def test_grasp_removes_the_highest_scores():
    model = conv_net()
    batches = data(4)
    ctx = PruneContext(model, batches=lambda: iter(batches), options={"samples_per_class": 2})
    scores = grasp_scores(ctx, 200.0, 2)
    mask = METHODS.get("grasp")(ctx, 0.6)
    flat_scores = torch.cat([scores[n].flatten() for n in mask])
    flat_mask = torch.cat([mask[n].flatten() for n in mask])
    assert flat_scores[~flat_mask].min() >= flat_scores[flat_mask].max()
    assert kept(mask) == keep_count(total(mask), 0.6)

    # The score is -w * Hg of the sampled examples at temperature 200.
    x, y, chunk = sample_per_class(iter(batches), 2, N_CLASSES)
    twin = copy.deepcopy(model)
    weights = Scope().params(twin)
    _, hg = hessian_gradient_product(twin, weights, x, y, F.cross_entropy, 200.0, chunk)
    for name, w in weights.items():
        torch.testing.assert_close(scores[name], -w.detach() * hg[name])


def test_grasp_samples_per_class_in_order_and_stops_reading():
    labels = [torch.tensor([0, 0, 1, 0]), torch.tensor([2, 1, 1, 2]), torch.tensor([2, 0, 1, 1])]
    batches = [(torch.arange(4.0) + 10 * i, y) for i, y in enumerate(labels)]
    recording = RecordingBatches(batches + [nan_batch(4)])
    x, y, chunk = sample_per_class(recording(), 2, N_CLASSES)
    assert y.tolist() == [0, 0, 1, 2, 1, 2]
    assert x.tolist() == [0.0, 1.0, 2.0, 10.0, 11.0, 13.0]
    assert chunk == 4
    assert recording.yielded == 2

    model = conv_net()
    poisoned = RecordingBatches(data(6) + [nan_batch()])
    mask = METHODS.get("grasp")(
        PruneContext(model, batches=poisoned, options={"samples_per_class": 2}), 0.5
    )
    assert poisoned.yielded < 7
    assert kept(mask) == keep_count(total(mask), 0.5)


def test_grasp_keeps_pruned_weights_pruned():
    model, batches = conv_net(), data(4)
    previous = METHODS.get("random")(PruneContext(model), 0.3)
    ctx = PruneContext(model, batches=lambda: iter(batches), mask=previous,
                       options={"samples_per_class": 2})
    mask = METHODS.get("grasp")(ctx, 0.7)
    assert all(not (mask[n] & ~previous[n]).any() for n in mask)
    assert kept(mask) == keep_count(total(mask), 0.7)


# --- SynFlow ----------------------------------------------------------------------------


def deep_mlp() -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 4)
    )


def test_synflow_one_round_equals_hand_autograd_in_float64():
    model = conv_net(batchnorm=True)
    with torch.no_grad():
        model[1].running_mean.uniform_(0.0, 0.1)
        model[1].weight.uniform_(-1.0, 1.0)
    hand = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in hand.parameters():
            p.copy_(p.abs())
    weights = Scope().params(hand)
    r = hand(torch.ones(1, 4, 6, 6, dtype=torch.float64)).sum()
    grads = torch.autograd.grad(r, list(weights.values()))
    expected = {n: (g * w).abs().detach() for (n, w), g in zip(weights.items(), grads)}

    scores = synflow_scores(linearised_copy(model), Scope(), (4, 6, 6))
    for name in expected:
        assert scores[name].dtype == torch.float64
        torch.testing.assert_close(scores[name], expected[name])
    ctx = PruneContext(model, options={"iterations": 1, "input_shape": [4, 6, 6]})
    mask = METHODS.get("synflow")(ctx, 0.8)
    assert same(mask, global_topk_mask(expected, 0.8))


def test_synflow_iterative_differs_from_single_shot():
    model = deep_mlp()
    def run(iterations: int):
        ctx = PruneContext(model, options={"iterations": iterations, "input_shape": [12]})
        return METHODS.get("synflow")(ctx, 0.97)

    one, many = run(1), run(50)
    assert not same(one, many)
    for mask in (one, many):
        assert kept(mask) == keep_count(total(mask), 0.97)


def test_synflow_schedules():
    exp = round_sparsities(0.0, 0.99, 4, "exponential")
    assert exp[-1] == 0.99
    assert [1 - s for s in exp] == pytest.approx([0.01 ** (k / 4) for k in range(1, 5)])
    assert round_sparsities(0.2, 0.6, 4, "linear") == pytest.approx([0.3, 0.4, 0.5, 0.6])
    model = deep_mlp()
    options = {"iterations": 5, "schedule": "linear", "input_shape": [12]}
    linear = METHODS.get("synflow")(PruneContext(model, options=options), 0.9)
    assert kept(linear) == keep_count(total(linear), 0.9)
    with pytest.raises(ConfigError, match="methods.synflow.schedule"):
        METHODS.get("synflow")(
            PruneContext(model, options={"schedule": "cubic", "input_shape": [12]}), 0.9
        )


def test_synflow_never_reads_data_and_leaves_the_model_alone():
    model = conv_net(batchnorm=True).train()
    state = copy.deepcopy(model.state_dict())
    options = {"iterations": 10}
    unread = RecordingBatches(data(2))
    reference = METHODS.get("synflow")(
        PruneContext(model, batches=unread, options={**options, "input_shape": [4, 6, 6]}), 0.9
    )
    assert unread.calls == 0 and unread.yielded == 0
    poisoned = RecordingBatches([nan_batch()] * 3)
    from_shape = METHODS.get("synflow")(PruneContext(model, batches=poisoned, options=options), 0.9)
    assert poisoned.yielded <= 1
    assert same(reference, from_shape)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert model.training
    with pytest.raises(ConfigError, match="methods.synflow.input_shape"):
        METHODS.get("synflow")(PruneContext(model), 0.9)


def test_synflow_keeps_pruned_weights_pruned():
    model = deep_mlp()
    previous = METHODS.get("random")(PruneContext(model), 0.5)
    ctx = PruneContext(model, mask=previous, options={"iterations": 10, "input_shape": [12]})
    mask = METHODS.get("synflow")(ctx, 0.9)
    assert all(not (mask[n] & ~previous[n]).any() for n in mask)
    assert kept(mask) == keep_count(total(mask), 0.9)
    with pytest.raises(ConfigError, match="below the current mask"):
        METHODS.get("synflow")(ctx, 0.3)


# --- ERK --------------------------------------------------------------------------------

SHAPES = {
    "conv1.weight": (8, 3, 3, 3),
    "conv2.weight": (32, 8, 3, 3),
    "conv3.weight": (64, 32, 3, 3),
    "fc.weight": (10, 1024),
}


def test_erk_densities_hit_the_budget_and_favour_small_layers():
    sizes = {n: torch.Size(s).numel() for n, s in SHAPES.items()}
    for density in (0.05, 0.2, 0.5):
        densities = erk_densities(SHAPES, density)
        assert all(0.0 < d <= 1.0 for d in densities.values())
        assert sum(densities[n] * sizes[n] for n in SHAPES) == pytest.approx(
            density * sum(sizes.values())
        )
        raw = {n: sum(s) / sizes[n] for n, s in SHAPES.items()}
        by_raw = sorted(SHAPES, key=raw.get)
        assert [densities[n] for n in by_raw] == sorted(densities[n] for n in by_raw)
    # At density 0.5 the smallest layer would exceed 1: it is made dense, the rest re-solved.
    densities = erk_densities(SHAPES, 0.5)
    assert densities["conv1.weight"] == 1.0
    assert densities["conv2.weight"] < 1.0


def test_random_erk_mask_hits_the_global_count():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 32, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(32 * 4, 10),
    )
    for sparsity in (0.5, 0.9):
        ctx = PruneContext(model, options={"distribution": "erk"})
        mask = METHODS.get("random")(ctx, sparsity)
        target = keep_count(total(mask), sparsity)
        assert abs(kept(mask) - target) <= len(mask)
        layers = sparsity_report(mask)["per_layer"]
        assert layers["0.weight"]["weight_sparsity"] < layers["2.weight"]["weight_sparsity"]


# --- Determinism and exact sparsity ----------------------------------------------------


CASES = {
    "snip": {},
    "grasp": {"samples_per_class": 2},
    "synflow": {"iterations": 5},
    "random": {"distribution": "erk"},
}


@pytest.mark.parametrize("method", sorted(CASES))
def test_same_seed_same_mask_and_exact_sparsity(method):
    def run(seed: int):
        ctx = PruneContext(
            conv_net(),
            options=CASES[method],
            generator=torch.Generator().manual_seed(seed),
            batches=lambda: iter(data(4)),
        )
        return METHODS.get(method)(ctx, 0.75)

    first, second = run(7), run(7)
    assert same(first, second)
    assert abs(kept(first) - keep_count(total(first), 0.75)) <= len(first)
    if method == "random":
        assert not same(first, run(8))


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_dropout_in_train_mode_draws_from_the_context_generator(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, N_CLASSES))
    batches = [(torch.randn(12, 6), torch.arange(12) % N_CLASSES)]

    def run(seed: int):
        ctx = PruneContext(model, generator=torch.Generator().manual_seed(seed),
                           batches=lambda: iter(batches), options=CASES[method])
        return METHODS.get(method)(ctx, 0.5)

    global_state = torch.get_rng_state()
    first = run(1)
    assert torch.equal(torch.get_rng_state(), global_state)
    torch.manual_seed(123)  # a different global RNG must not matter
    assert same(first, run(1))
    assert not same(first, run(2))


def test_grasp_warns_when_the_calibration_sample_is_short_of_a_class(caplog):
    from prunebench.pruning.grasp import sample_per_class

    x = torch.randn(12, 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 0, 1])  # class 2 appears twice
    with caplog.at_level("WARNING"):
        xs, ys, _ = sample_per_class([(x[:6], y[:6]), (x[6:], y[6:])], 4, 3)
    assert ys.tolist().count(2) == 2 and len(ys) == 10
    assert "1 of 3 classes have fewer than 4" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        sample_per_class([(x, y)], 2, 3)
    assert "fewer than" not in caplog.text
