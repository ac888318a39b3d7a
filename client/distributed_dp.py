"""What a site computes in a distributed-DP round: noised sums, never a per-site value.

Under distributed DP the sites train one model by full-batch gradient descent together:
each site clips every training patient's gradient to norm ``clip``, sums them in integer
units, and adds its *share* of Skellam noise, sized so that the shares of the
``min_sites`` sites a round must keep add up to the noise one trusted curator would add
to the consortium's sum (:func:`client.distributed_round.skellam_share_variance`). The
noised sum leaves the site only inside Flower's SecAgg+, so the coordinator learns only
the consortium's noised sum and takes the step.

The same holds for everything else a site reports: its class counts (once per run) and
its validation confusion counts (every round) are noised sums too.

The loss is logit-adjusted cross-entropy (Menon et al., 2021): the log of the
consortium's noised class prior is added to the logits while training, so the model's
own logits estimate a class-balanced posterior and rare subtypes are predicted without
class weights, which per-patient clipping would cancel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


def clipped_gradient_sum(
    model: nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor,
    y: torch.Tensor,
    log_prior: torch.Tensor,
    clip: float,
    *,
    units: float | None = None,
    chunk: int = 256,
) -> tuple[dict[str, torch.Tensor], float]:
    """Sum over patients of each patient's loss gradient clipped to L2 norm ``clip``.

    Returns the sums by parameter name and the summed (unclipped) loss. Per-patient
    gradients come from ``torch.func`` (vmap of grad over the batch), ``chunk`` patients
    at a time to bound memory. With ``units``, every clipped gradient is scaled by it and
    rounded coordinate by coordinate before the sum, which is then an integer vector in
    float64 (:mod:`common.discrete_dp`).
    """
    from torch.func import functional_call, grad, vmap

    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def patient_loss(p: dict[str, torch.Tensor], xi: torch.Tensor, mi: torch.Tensor,
                     yi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = functional_call(model, (p, buffers), (xi[None], mi[None]))
        loss = nn.functional.cross_entropy(logits + log_prior, yi[None])
        return loss, loss.detach()  # the loss rides along as grad's auxiliary output

    per_patient = vmap(grad(patient_loss, has_aux=True), in_dims=(None, 0, 0, 0),
                       randomness="different")
    sums = {k: torch.zeros_like(p, dtype=torch.float64 if units else p.dtype)
            for k, p in params.items()}
    loss_sum = 0.0
    was_training = model.training
    model.eval()  # no dropout: the gradient of the model the consortium holds
    try:
        for start in range(0, len(y), chunk):
            sl = slice(start, start + chunk)
            grads, losses = per_patient(params, x[sl], mask[sl], y[sl])
            norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(dim=1) for g in grads.values()))
            scale = (clip / (norms + 1e-12)).clamp(max=1.0)
            for k, g in grads.items():
                if units:
                    clipped = g.double() * scale.double().view(-1, *([1] * (g.dim() - 1)))
                    sums[k] += torch.round(clipped * units).sum(dim=0)
                else:
                    sums[k] += torch.einsum("b,b...->...", scale, g)
            loss_sum += float(losses.sum())
    finally:
        model.train(was_training)
    return sums, loss_sum


def flatten_in_order(values: dict[str, torch.Tensor], template: dict[str, Any]
                     ) -> list[np.ndarray]:
    """``values`` as float64 arrays in ``template``'s order (zeros for names it lacks,
    such as buffers, which gradient descent leaves unchanged)."""
    out = []
    for name, ref in template.items():
        v = values.get(name)
        arr = (np.zeros(tuple(ref.shape)) if v is None
               else v.detach().cpu().double().numpy())
        out.append(arr)
    return out
