"""What the model computes inside, for every test patient: class probabilities, the
patient embedding fed to the classification head, the modality fusion weights and the
cross-modal attention of every transformer block.

Read through forward hooks, so the model code stays as it is. The attention matrix is
recomputed from the block's input with its own projection weights (the module returns
only its output); the recomputation is checked against the module's actual output.

The hooks sit on the model itself, which the inference service shares between request
threads: each hook records only the forward passes of the thread that registered it, so
concurrent explanations and predictions never see each other's tensors.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import torch

from common.dataset.multiomics import MultiOmicsData

BATCH = 256


@dataclass
class ModelOutputs:
    proba: np.ndarray  # [n, C]
    embeddings: np.ndarray  # [n, d]: the fused vector the linear head classifies
    fusion_weights: np.ndarray  # [n, M]: per patient, over the patient's modalities
    attention: np.ndarray  # [M, M]: mean attention from query modality to key modality
    attention_check: float  # max |recomputed block output - actual| (should be ~1e-6)


def inspect_model(model: torch.nn.Module, data: MultiOmicsData) -> ModelOutputs:
    """Run ``model`` (eval mode) over standardized ``data`` and collect its internals."""
    from common.training import tensors

    x, mask, _ = tensors(data)
    return inspect_tensors(model, x, mask)


def inspect_tensors(model: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor
                    ) -> ModelOutputs:
    """:func:`inspect_model` on standardized inputs ``x [n, F]`` and ``mask [n, M]``
    (the inference service's ``/v1/explain`` reads one patient's internals here)."""
    model.eval()
    captured: dict[str, list] = {"embedding": [], "attn_in": [], "attn_out": []}
    caller = threading.get_ident()

    def keep_embedding(_mod: torch.nn.Module, args: tuple) -> None:
        if threading.get_ident() == caller:
            captured["embedding"].append(args[0].detach())

    def keep_attention_io(mod: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        if threading.get_ident() == caller:
            captured["attn_in"].append((mod, args[0], args[1]))
            captured["attn_out"].append(out.detach())

    hooks = [model.head.register_forward_pre_hook(keep_embedding)]

    # Tokens per modality; a model without them (the TabTransformer attends over
    # columns, not modalities) has no cross-modal attention to summarise.
    tokens = getattr(model, "tokens", None)
    blocks = list(model.blocks) if tokens is not None else []
    hooks += [block.attn.register_forward_hook(keep_attention_io) for block in blocks]
    probas, weights, attn_sum, check = [], [], None, 0.0
    try:
        with torch.inference_mode():
            for i in range(0, len(x), BATCH):
                xb, mb = x[i:i + BATCH], mask[i:i + BATCH]
                probas.append(torch.softmax(model(xb, mb).float(), dim=-1))
                weights.append(model.modality_weights(mb > 0.5))
                for (mod, h, bias), out in zip(captured["attn_in"], captured["attn_out"],
                                               strict=True):
                    attn, recomputed = _attention(mod, h, bias)
                    check = max(check, float((recomputed - out).abs().max()))
                    batch_sum = attn.mean(dim=1).sum(dim=0)  # over heads, then patients
                    attn_sum = batch_sum if attn_sum is None else attn_sum + batch_sum
                captured["attn_in"].clear()
                captured["attn_out"].clear()
    finally:
        for hook in hooks:
            hook.remove()
    n_calls = max(1, len(blocks)) * len(x)
    token_attn = (attn_sum / n_calls).numpy() if attn_sum is not None else None
    return ModelOutputs(
        proba=torch.cat(probas).numpy(),
        embeddings=torch.cat(captured["embedding"]).numpy(),
        fusion_weights=torch.cat(weights).numpy(),
        attention=_by_modality(token_attn, tokens) if token_attn is not None
        else np.zeros((len(model.modalities),) * 2),
        attention_check=check,
    )


def _attention(mod: torch.nn.Module, h: torch.Tensor, key_bias: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(attention [B, heads, T, T], the module's output recomputed from it)``."""
    b, t, d = h.shape
    heads = mod.n_heads
    q, k, v = mod.qkv(h).view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads) + key_bias[:, None, None, :]
    attn = torch.softmax(scores, dim=-1)
    return attn, mod.out((attn @ v).transpose(1, 2).reshape(b, t, d))


def _by_modality(token_attn: np.ndarray, tokens: list[int]) -> np.ndarray:
    """Token-to-token attention summed over each key modality's tokens and averaged
    over each query modality's tokens: rows sum to 1."""
    bounds = np.cumsum([0, *tokens])
    m = len(tokens)
    out = np.zeros((m, m))
    for i in range(m):
        rows = token_attn[bounds[i]:bounds[i + 1]]
        for j in range(m):
            out[i, j] = rows[:, bounds[j]:bounds[j + 1]].sum(axis=1).mean()
    return out
