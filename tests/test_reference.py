"""Reference values: each method or schedule checked against a value computed independently
of the code under test (explicit formulas, a law the method must obey, a closed form, or the
published implementation's ordering), not against the same computation written twice.

- SNIP (Lee et al. 2019): |g ⊙ w| with the gradient of a 2-layer MLP written out by hand;
- SynFlow (Tanaka et al. 2020): the conservation law of synaptic saliency;
- ERK (Evci et al. 2020): the closed-form layer densities, solved as the RigL code does;
- GraSP (Wang et al. 2020): the published code's two-pass Hg and its removal order;
- late rewinding (Frankle et al. 2020, OpenLTH): iterations k..T with the learning rates of
  the uninterrupted run's positions, by a hand-written SGD loop, and in the lottery stage.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunebench.config import TrainConfig
from prunebench.data import DataSplits
from prunebench.pruning import METHODS, PruneContext, Scope, sparsity_report
from prunebench.pruning.erk import erk_densities
from prunebench.pruning.snip import snip_scores
from prunebench.pruning.synflow import linearised_copy, synflow_scores
from prunebench.training import train


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


# ----------------------------------------------------------------------------- SNIP


def mlp2(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double()


def hand_gradients(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor):
    """dL/dW1, dL/dW2 of the mean cross-entropy of relu(x W1ᵀ + b1) W2ᵀ + b2, by hand."""
    w1, b1 = model[0].weight.detach(), model[0].bias.detach()
    w2, b2 = model[2].weight.detach(), model[2].bias.detach()
    pre = x @ w1.T + b1
    h = pre.clamp(min=0)
    z = h @ w2.T + b2
    p = torch.exp(z - z.max(1, keepdim=True).values)
    p = p / p.sum(1, keepdim=True)
    dz = (p - F.one_hot(y, z.shape[1]).double()) / len(y)  # d(mean CE)/dz
    dw2 = dz.T @ h
    dpre = (dz @ w2) * (pre > 0).double()
    dw1 = dpre.T @ x
    return {"0.weight": dw1, "2.weight": dw2}


def test_snip_scores_and_mask_match_a_hand_computed_gradient():
    model = mlp2()
    g = generator(1)
    x = torch.randn(16, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=g)
    other = (torch.randn(16, 5, generator=g, dtype=torch.float64),
             torch.randint(0, 3, (16,), generator=g))
    grads = hand_gradients(model, x, y)
    weights = {"0.weight": model[0].weight.detach(), "2.weight": model[2].weight.detach()}
    hand = {n: (grads[n] * weights[n]).abs() for n in weights}
    # The paper's normalised sensitivity s_j = |g_j w_j| / sum_k |g_k w_k|.
    total = sum(s.sum() for s in hand.values())
    hand_normalised = {n: s / total for n, s in hand.items()}

    ctx = PruneContext(model, batches=lambda: iter([(x, y), other]))
    scores = snip_scores(ctx, 1)  # the first batch only
    code_total = sum(s.sum() for s in scores.values())
    for name in weights:
        torch.testing.assert_close(scores[name], hand[name], rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(scores[name] / code_total, hand_normalised[name])

    sparsity = 0.75
    n_keep = round((1 - sparsity) * sum(w.numel() for w in weights.values()))
    kept = flat(hand_normalised.values()).argsort(descending=True)[:n_keep]
    expected = torch.zeros(sum(w.numel() for w in weights.values()), dtype=torch.bool)
    expected[kept] = True
    mask = METHODS.get("snip")(ctx, sparsity)
    assert torch.equal(flat(mask[n] for n in weights), expected)


# ----------------------------------------------------------------------------- SynFlow


def synflow_mlp(bias: bool) -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(6, 9, bias=bias), nn.ReLU(), nn.Linear(9, 5, bias=bias),
                         nn.ReLU(), nn.Linear(5, 3, bias=bias))


def synflow_conv(bias: bool) -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, bias=bias), nn.ReLU(),
        nn.Conv2d(3, 4, 3, padding=1, bias=bias), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(4 * 2 * 2, 5, bias=bias),
    )


def hand_synflow_r(model: nn.Module, input_shape) -> float:
    """R = sum of the outputs of the network with every parameter replaced by |value|, on
    an all-ones input, by explicit operations (no autograd, no module calls)."""
    h = torch.ones(1, *input_shape, dtype=torch.float64)
    for layer in model:
        if isinstance(layer, nn.Linear):
            h = h @ layer.weight.detach().double().abs().T
            h = h + (layer.bias.detach().double().abs() if layer.bias is not None else 0)
        elif isinstance(layer, nn.Conv2d):
            h = F.conv2d(h, layer.weight.detach().double().abs(),
                         None if layer.bias is None else layer.bias.detach().double().abs(),
                         padding=layer.padding)
        elif isinstance(layer, nn.AvgPool2d):
            h = F.avg_pool2d(h, layer.kernel_size)
        elif isinstance(layer, nn.Flatten):
            h = h.flatten(1)
        # ReLU: every value is >= 0 already
    return float(h.sum())


@pytest.mark.parametrize("build, input_shape", [(synflow_mlp, (6,)), (synflow_conv, (2, 6, 6))],
                         ids=["mlp", "conv"])
def test_synflow_scores_obey_the_conservation_law(build, input_shape):
    """Without biases every layer's scores sum to the same total R = sum(f(1)) (Tanaka et
    al. 2020, Theorem 2). With biases, the cut above layer l holds that layer's weights and
    the biases of layer l onwards: their scores sum to R."""
    model = build(bias=False)
    scores = synflow_scores(linearised_copy(model), Scope(), input_shape)
    r = hand_synflow_r(model, input_shape)
    assert len(scores) == 3 and r > 1.0
    for name, s in scores.items():
        assert float(s.sum()) == pytest.approx(r, rel=1e-10), name

    model = build(bias=True)
    linearised = linearised_copy(model)
    scores = synflow_scores(linearised, Scope(), input_shape)
    biases = [m.bias for m in linearised.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for b in biases:
        b.requires_grad_(True)
    out = linearised(torch.ones(1, *input_shape, dtype=torch.float64)).sum()
    bias_grads = torch.autograd.grad(out, biases)
    bias_scores = [float((g * b.detach()).abs().sum()) for g, b in zip(bias_grads, biases)]
    r = hand_synflow_r(model, input_shape)
    for layer, s in enumerate(scores.values()):
        assert float(s.sum()) + sum(bias_scores[layer:]) == pytest.approx(r, rel=1e-10)
    assert float(next(iter(scores.values())).sum()) < r  # biases take a share


# ----------------------------------------------------------------------------- ERK


def rigl_erk_densities(layers: dict[str, tuple[int, int, int, int]], density: float):
    """ERK densities as the RigL code solves them (Evci et al. 2020,
    sparse_utils.get_sparsities_erdos_renyi): raw_l = (n_in + n_out + k_h + k_w) /
    (n_in n_out k_h k_w), eps with sum_l eps raw_l size_l = the budget of the non-dense
    layers; while eps raw_l > 1 for some layer, the layer with the largest raw_l is made
    dense (one per pass) and eps is solved again. Layers are (n_in, n_out, k_h, k_w); a
    linear layer has no kernel term: (n_in + n_out) / (n_in n_out)."""
    def raw(n_in, n_out, kh, kw):
        if kh == 0:
            return (n_in + n_out) / (n_in * n_out)
        return (n_in + n_out + kh + kw) / (n_in * n_out * kh * kw)

    sizes = {n: n_in * n_out * max(kh, 1) * max(kw, 1)
             for n, (n_in, n_out, kh, kw) in layers.items()}
    dense: set[str] = set()
    while True:
        rhs = sum(sizes[n] * density for n in layers if n not in dense) - sum(
            sizes[n] * (1 - density) for n in dense)
        probs = {n: raw(*layers[n]) for n in layers if n not in dense}
        eps = rhs / sum(probs[n] * sizes[n] for n in probs)
        largest = max(probs.values())
        if eps * largest <= 1:
            return {n: 1.0 if n in dense else eps * probs[n] for n in layers}
        dense |= {n for n, p in probs.items() if p == largest}


def erk_model() -> nn.Sequential:
    torch.manual_seed(4)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10),
    )


ERK_LAYERS = {  # (n_in, n_out, k_h, k_w) of erk_model's layers; 0 = no kernel
    "0.weight": (1, 4, 3, 3), "2.weight": (4, 8, 3, 3), "5.weight": (128, 32, 0, 0),
    "7.weight": (32, 10, 0, 0),
}


@pytest.mark.parametrize("sparsity, dense_layers", [
    (0.5, {"0.weight", "7.weight"}), (0.8, {"0.weight"}), (0.95, set())])
def test_random_erk_allocation_is_the_closed_form(sparsity, dense_layers):
    reference = rigl_erk_densities(ERK_LAYERS, 1 - sparsity)
    assert {n for n, d in reference.items() if d == 1.0} == dense_layers  # the case is covered
    shapes = {n: tuple(p.shape) for n, p in Scope().params(erk_model()).items()}
    assert erk_densities(shapes, 1 - sparsity) == pytest.approx(reference, rel=1e-12)

    mask = METHODS.get("random")(PruneContext(erk_model(), options={"distribution": "erk"}),
                                 sparsity)
    report = sparsity_report(mask)
    for name, layer in report["per_layer"].items():
        assert abs(layer["nonzero"] - reference[name] * layer["total"]) <= 0.5 + 1e-9, name
    budget = (1 - sparsity) * report["prunable_total"]
    assert abs(report["prunable_nonzero"] - budget) <= len(mask) / 2


# ----------------------------------------------------------------------------- GraSP


def published_grasp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ratio: float,
                    T: float = 200.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, keep mask) of alecwangcq/GraSP `pruner/GraSP.py` with num_iters=1 and
    reinit=False (reinit only redraws the linear layers' initial weights before scoring),
    flat over the conv/linear weights in module order: g is the sum of the gradients of the
    two halves of the sample (first pass, logits / T); Hg = d/dw sum_halves(g · dL_h/dw)
    (second pass); score = -w ⊙ Hg divided by |sum of scores|; the `int(N * ratio)` highest
    scores are removed, and a weight is kept when its score <= the lowest removed score."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    n = len(x)
    halves = [(x[: n // 2], y[: n // 2]), (x[n // 2:], y[n // 2:])]
    g = None
    for xs, ys in halves:
        grads = torch.autograd.grad(F.cross_entropy(model(xs) / T, ys), weights)
        g = list(grads) if g is None else [a + b for a, b in zip(g, grads)]
    hg = [torch.zeros_like(w) for w in weights]
    for xs, ys in halves:
        grads = torch.autograd.grad(F.cross_entropy(model(xs) / T, ys), weights, create_graph=True)
        z = sum((gi.detach() * d).sum() for gi, d in zip(g, grads))
        for acc, d in zip(hg, torch.autograd.grad(z, weights)):
            acc += d
    scores = flat(-w.detach() * h for w, h in zip(weights, hg))
    scores = scores / (scores.sum().abs() + 1e-10)
    removed = int(len(scores) * ratio)
    acceptable = torch.topk(scores, removed, sorted=True).values[-1]
    return scores, scores <= acceptable


def grasp_sample(classes: int = 4, per_class: int = 3):
    """Batches of labels in reading order, and the first `per_class` examples of each class
    grouped by class (what the published GraSP_fetch_data returns)."""
    g = generator(5)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    y = torch.arange(40) % classes
    y = y[torch.randperm(40, generator=g)]
    picked = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in range(classes)])
    batches = [(x[i:i + 10], y[i:i + 10]) for i in range(0, 40, 10)]
    return batches, x[picked], y[picked]


def test_grasp_keeps_what_the_published_implementation_keeps():
    """The published code sums two half-sample gradients and Hessian products, so its Hg is
    4x the full-sample one: a positive factor, so the same ranking. It removes the highest
    -w ⊙ Hg and keeps the rest."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 8), nn.ReLU(),
                          nn.Linear(8, 4)).double()
    batches, x, y = grasp_sample()
    ratio = 0.6  # 60 + 80 + 32 = 172 weights; 0.6 * 172 is not whole: floor vs round agree
    n_weights = sum(p.numel() for p in Scope().params(model).values())
    assert math.floor(ratio * n_weights) == round(ratio * n_weights)
    scores, published = published_grasp(model, x, y, ratio)

    ctx = PruneContext(model, batches=lambda: iter(batches),
                       options={"samples_per_class": 3, "temperature": 200.0})
    mask = flat(METHODS.get("grasp")(ctx, ratio).values())
    # The published `<=` also keeps the lowest removed weight: one more than its count.
    n_keep = n_weights - math.floor(ratio * n_weights)
    assert int(published.sum()) == n_keep + 1
    assert int(mask.sum()) == n_keep
    assert torch.all(published[mask])
    # The opposite ordering (keeping the highest -w ⊙ Hg) disagrees: the check has power.
    highest = torch.zeros_like(mask)
    highest[scores.argsort(descending=True)[:n_keep]] = True
    assert int((highest & mask).sum()) < n_keep / 2


# ----------------------------------------------------------------------------- late rewinding


def rewinding_data() -> DataSplits:
    g = generator(7)
    x = torch.randn(200, 1, 3, 4, generator=g)
    y = (x.flatten(1).sum(1) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()
    return DataSplits("toy", 4, (1, 3, 4), x[:160], y[:160], x[160:180], y[160:180],
                      x[180:], y[180:], None)


def rewinding_model() -> nn.Module:
    torch.manual_seed(8)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))


def cosine_lr(lr: float, t: int, total: int) -> float:
    return lr * 0.5 * (1 + math.cos(math.pi * t / total))


def hand_sgd_from(model: nn.Module, data: DataSplits, recipe: TrainConfig, seed: int, k: int,
                  mask: dict) -> None:
    """Iterations k..T-1 of SGD with momentum (a fresh buffer at k, as OpenLTH's rewound runs
    start with a fresh optimizer): step t uses the t-th batch of the uninterrupted run (batch
    t mod S of epoch t // S, in that epoch's documented order) and the cosine learning rate at
    position t of T; pruned weights are zeroed after every step."""
    from prunebench.training.loop import epoch_generator  # the documented data-order contract

    steps = math.ceil(len(data.train_y) / recipe.batch_size)
    total = recipe.epochs * steps
    params = dict(model.named_parameters())
    buffers: dict[str, torch.Tensor] = {}
    for t in range(k, total):
        epoch, position = divmod(t, steps)
        order = torch.randperm(len(data.train_y), generator=epoch_generator(seed, epoch))
        index = order[position * recipe.batch_size:(position + 1) * recipe.batch_size]
        loss = F.cross_entropy(model(data.train_x[index]), data.train_y[index])
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
        lr = cosine_lr(recipe.lr, t, total)
        with torch.no_grad():
            for name, p in params.items():
                buffers[name] = grads[name].clone() if name not in buffers else (
                    recipe.momentum * buffers[name] + grads[name])
                p -= lr * buffers[name]
                if name in mask:
                    p *= mask[name]


def test_training_from_iteration_k_matches_a_hand_written_loop():
    data = rewinding_data()
    recipe = TrainConfig(epochs=3, batch_size=32, optimizer="sgd", lr=0.1, momentum=0.9,
                         schedule="cosine")
    k = 7  # 5 steps per epoch: inside the second epoch
    start = rewinding_model()
    mask = {"1.weight": torch.rand(16, 12, generator=generator(9)) > 0.5}
    with torch.no_grad():
        start[1].weight *= mask["1.weight"]
    code, hand = rewinding_model(), rewinding_model()
    code.load_state_dict(start.state_dict())
    hand.load_state_dict(start.state_dict())
    state = train(code, data, recipe, seed=11, mask=mask, start_iteration=k, progress=False)
    hand_sgd_from(hand, data, recipe, 11, k, mask)
    assert state.iteration == 15
    for (name, a), b in zip(code.named_parameters(), hand.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_lottery_level_rewound_to_k_trains_k_to_the_end_at_the_uninterrupted_rates(
        tmp_path, monkeypatch):
    import prunebench.training.loop as loop
    from prunebench.context import StudyContext
    from prunebench.executor import Executor
    from prunebench.stages.base import dense_run
    from prunebench.stages.lottery import level_run, rewind_weights
    from prunebench.study import parse_study

    k = 15  # 11 steps per epoch: inside the second epoch
    study = parse_study("tiny", {
        "data": {"name": "digits"}, "model": {"name": "mlp_digits"},
        "train": {"epochs": 2, "batch_size": 128, "lr": 0.05, "schedule": "cosine"},
        "methods": {"lottery": {"prune_fraction": 0.8, "rewind_iteration": k,
                                "reinit_control": False}},
        "sparsities": [0.8], "seeds": [0]})
    ex = Executor(StudyContext(study, tmp_path), "cpu", progress=False)
    dense = ex.ensure(dense_run(ex.ctx, 0))
    rewind_weights(ex, dense, 0, k)  # the replay to k, before the rates are recorded
    rates = []
    real_set_lr = loop.set_lr
    monkeypatch.setattr(loop, "set_lr", lambda opt, lr: (rates.append(lr), real_set_lr(opt, lr)))
    ex.ensure(level_run(ex.ctx, study.method("lottery"), [0.8], 0))

    steps = math.ceil(len(ex.data.train_y) / 128)
    total = 2 * steps
    assert steps < k < total
    assert rates == pytest.approx([cosine_lr(0.05, t, total) for t in range(k, total)], rel=1e-12)
