"""Hostile hospitals for simulations: the same ClientApp, with an attack on their own
data or their own update only.

An attack is a Flower mod given to ``client.app.build_client_app(train_mods=...)``: it
runs next to the training handler of every site and acts only when the site is one of
the malicious ones (by ``partition-id``). The handler, the data loading and the
protocol are the product's.

* ``label-flip``: the site trains on its training patients with every label ``c``
  replaced by ``C - 1 - c`` (its validation split is left alone);
* ``sign-flip``: it sends ``w_global - (w - w_global)``, its update reversed;
* ``scale:K``: it sends ``w_global + K (w - w_global)``;
* ``noise``: it replaces its update by Gaussian noise of the same L2 norm;
* ``nan``: it sends weights that are all NaN;
* ``free-rider``: it does not train and sends the global model back, declaring its
  patients as usual.

The malicious sites are the ``N`` largest by training patients (ties by name): the
attackers with the most weight in a sample-weighted mean, and whose data a defence that
leaves them out loses most of. ``random`` draws them from the run's seed instead: a
hostile hospital of ordinary size.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from common.protocol import ARRAYS, to_array

ATTACKS = ("label-flip", "sign-flip", "scale:K", "noise", "nan", "free-rider")
UPDATE_ATTACKS = ("sign-flip", "scale", "noise", "nan", "free-rider")
# Which sites attack: the largest by training patients, or drawn from the seed.
ATTACKERS = ("largest", "random")


@dataclass(frozen=True)
class Attack:
    """One attack: its kind and, for ``scale``, the factor."""

    kind: str
    factor: float = 1.0

    @classmethod
    def parse(cls, text: str) -> Attack:
        """``label-flip``, ``sign-flip``, ``scale:K``, ``noise``, ``nan`` or ``free-rider``."""
        kind, _, arg = text.strip().partition(":")
        if kind == "scale":
            try:
                factor = float(arg)
            except ValueError:
                raise ValueError(f"attack {text!r}: scale needs a factor, e.g. scale:10") from None
            if not np.isfinite(factor):
                raise ValueError(f"attack {text!r}: the factor must be finite")
            return cls("scale", factor)
        if arg or kind not in ATTACKS:
            raise ValueError(f"unknown attack {text!r}; choose from {', '.join(ATTACKS)}")
        return cls(kind)

    @property
    def label(self) -> str:
        return f"scale:{self.factor:g}" if self.kind == "scale" else self.kind

    @property
    def on_update(self) -> bool:
        """True when the attack changes the reply (not the training data)."""
        return self.kind in UPDATE_ATTACKS

    def forge(self, trained: ArrayRecord, received: ArrayRecord, seed: int) -> ArrayRecord:
        """The weights the attacker sends instead of ``trained`` (global: ``received``)."""
        rng = np.random.default_rng(seed)
        out = {}
        deltas = {k: trained[k].numpy().astype(np.float64) - received[k].numpy() for k in trained}
        norm = float(np.sqrt(sum(float((d**2).sum()) for d in deltas.values())))
        noise = {k: rng.normal(size=d.shape) for k, d in deltas.items()}
        noise_norm = float(np.sqrt(sum(float((z**2).sum()) for z in noise.values()))) or 1.0
        for key, delta in deltas.items():
            base = received[key].numpy().astype(np.float64)
            if self.kind == "sign-flip":
                new = base - delta
            elif self.kind == "scale":
                new = base + self.factor * delta
            elif self.kind == "noise":
                new = base + noise[key] * (norm / noise_norm)
            elif self.kind == "nan":
                new = np.full_like(base, np.nan)
            else:  # free-rider
                new = base
            out[key] = to_array(new.astype(trained[key].numpy().dtype))
        return ArrayRecord(out)


@dataclass(frozen=True)
class AttackPlan:
    """An attack and the simulated hospitals (partition ids and names) that mount it."""

    attack: Attack
    partition_ids: tuple[int, ...]
    sites: tuple[str, ...]

    def record(self) -> dict[str, Any]:
        """What metrics.json keeps about the attack."""
        return {"attack": self.attack.label, "malicious": len(self.sites),
                "sites": list(self.sites)}


def plan_attack(attack: str, malicious: int, site_sizes: Sequence[tuple[str, int]], *,
                attackers: str = "largest", seed: int = 0) -> AttackPlan:
    """``malicious`` of ``site_sizes`` (name, training patients, in partition order)
    mounting ``attack``: the largest, or with ``attackers="random"`` drawn from ``seed``;
    at least one site must stay honest."""
    parsed = Attack.parse(attack)
    if attackers not in ATTACKERS:
        raise ValueError(f"--attackers must be one of {', '.join(ATTACKERS)}, got {attackers!r}")
    if not 1 <= malicious < len(site_sizes):
        raise ValueError(f"--malicious must be between 1 and {len(site_sizes) - 1} (the "
                         f"federation has {len(site_sizes)} sites), got {malicious}")
    if attackers == "largest":
        order = sorted(range(len(site_sizes)),
                       key=lambda i: (-site_sizes[i][1], site_sizes[i][0]))
    else:
        order = np.random.default_rng([seed, zlib.crc32(b"attackers")]).permutation(
            len(site_sizes)).tolist()
    chosen = sorted(order[:malicious])
    return AttackPlan(parsed, tuple(chosen), tuple(site_sizes[i][0] for i in chosen))


def attack_mod(plan: AttackPlan):
    """The Flower mod (for ``train_mods``) that makes the plan's sites attack."""
    malicious = set(plan.partition_ids)
    attack = plan.attack

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        partition = context.node_config.get("partition-id")
        if partition is None or int(partition) not in malicious:
            return call_next(msg, context)
        if not attack.on_update:
            with flipped_training_labels():
                return call_next(msg, context)
        if ARRAYS not in msg.content.array_records:
            raise RuntimeError("update attacks are simulated without secure aggregation")
        reply = call_next(msg, context)
        if reply.has_error() or ARRAYS not in reply.content.array_records:
            return reply  # the site declined or failed: nothing to forge
        seed = zlib.crc32(f"{partition}:{msg.metadata.message_id}".encode())
        reply.content[ARRAYS] = attack.forge(reply.content[ARRAYS], msg.content[ARRAYS], seed)
        return reply

    return mod


@contextlib.contextmanager
def flipped_training_labels() -> Iterator[None]:
    """While open, sites load with their training labels reversed (``c -> C - 1 - c``)."""
    import client.site as site_module

    load_site = site_module.load_site

    def flipped(node_config: dict[str, Any], cfg: Any) -> Any:
        site = load_site(node_config, cfg)
        train = site.train
        labels = train.schema.n_classes - 1 - train.labels
        return replace(site, train=replace(train, labels=labels))

    site_module.load_site = flipped
    try:
        yield
    finally:
        site_module.load_site = load_site
