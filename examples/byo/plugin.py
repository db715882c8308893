"""The example's plugin: its dataset and its own pruning method, registered on import.

`plugins: [examples/byo/plugin.py]` in the params file makes every prunebench process
(Snakemake, each job, SLURM jobs) import it before the studies are parsed. Its source is
part of the name of every run that uses what it registers, so editing it reruns those.
"""

from __future__ import annotations

import torch

from prunebench.data import image_folder, register_dataset
from prunebench.options import positive_int
from prunebench.pruning import PruneContext, global_topk_mask, register_method

# Images made by examples/byo/make_data.py, in the image-folder layout.
register_dataset(image_folder("byo_shapes", "data/byo_shapes"))


@register_method("taylor", when="trained", needs_data=True, options={
    "batches": positive_int(4, "calibration batches the scores are summed over"),
})
def taylor(ctx: PruneContext, sparsity: float):
    """First-order Taylor importance |w * dL/dw| (Molchanov et al. 2017), per weight,
    summed over calibration batches; the lowest-scoring weights are pruned globally."""
    params = ctx.params
    scores = {name: torch.zeros_like(p) for name, p in params.items()}
    was_training = ctx.model.training
    ctx.model.eval()  # BatchNorm statistics stay as trained
    for i, (x, y) in enumerate(ctx.require_batches("taylor")()):
        if i == ctx.options["batches"]:
            break
        ctx.model.zero_grad(set_to_none=True)
        ctx.loss_fn(ctx.model(x), y).backward()
        for name, p in params.items():
            scores[name] += (p.detach() * p.grad).abs()
    ctx.model.zero_grad(set_to_none=True)
    ctx.model.train(was_training)
    return global_topk_mask(scores, sparsity, ctx.mask)
