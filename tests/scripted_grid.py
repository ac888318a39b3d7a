"""A Flower Grid whose sites are scripted in Python: the round loop without Flower processes.

:class:`ScriptedSite` answers ``describe``, ``setup``, ``train`` and ``evaluate`` the way
``client.app`` does (it keeps the setup per run and refuses rounds planned with another
setup), but its "training" moves every weight by a fixed per-site step and its validation
confusion counts come from a script, so tests control each round's outcome exactly.
:class:`ScriptedGrid` delivers messages to the sites at once and can take a site offline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, Error, Message, MessageType, RecordDict

from common.consortium_setup import SETUP, ConsortiumSetup, SetupMissing, acknowledgement
from common.dataset.multiomics import MultiOmicsData
from common.packed_arrays import unpack
from common.preprocessing import FeatureStats
from common.protocol import (
    ARRAYS,
    CONFIG,
    METRICS,
    QUERY_KIND,
    SERVER_ROUND,
    SITE,
    RoundConfig,
    SiteDescription,
    SiteMetrics,
    refusal,
    site_record,
    to_array,
)
from common.schema import FeatureSchema

LABELS = ("A", "B", "C")
SCHEMA = FeatureSchema.build({"rna": ["g1", "g2", "g3"], "meth": ["m1", "m2"]}, list(LABELS))


def synthetic_data(n: int, seed: int, schema: FeatureSchema = SCHEMA) -> MultiOmicsData:
    """``n`` patients with every modality, feature-specific offsets, all classes present."""
    rng = np.random.default_rng(seed)
    features = {m: rng.normal(rng.uniform(-5, 5, len(f)), 2.0, (n, len(f))).astype(np.float32)
                for m, f in schema.modalities}
    labels = np.arange(n) % schema.n_classes
    return MultiOmicsData(np.array([f"s{seed}-{i}" for i in range(n)]), features,
                          np.ones((n, len(schema.modalities)), dtype=bool),
                          labels.astype(np.int64), schema)


def confusion_with_hits(hits: int, n: int = 30, n_classes: int = len(LABELS)) -> np.ndarray:
    """A confusion matrix of ``n`` patients of which ``hits`` are classified right."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    for i in range(n):
        true = i % n_classes
        cm[true, true if i < hits else (true + 1) % n_classes] += 1
    return cm


@dataclass
class ScriptedSite:
    """One hospital: its name, training patients, per-weight step and validation script."""

    name: str
    n_train: int
    step: float  # every weight moves by this much per training round
    seed: int = 0
    # aggregate round -> correct validation patients (of 30) when validating it
    hits: Callable[[int], int] = lambda aggregate_round: 20
    refuse_from: int | None = None  # declines every round from this one on
    setup: ConsortiumSetup | None = None  # what the site keeps in Context.state
    received: list[Message] = field(default_factory=list)

    def describe(self) -> SiteDescription:
        data = synthetic_data(self.n_train, self.seed)
        return SiteDescription(self.name, data.schema, self.n_train, 30, data.class_counts(),
                               FeatureStats.of(data).shareable())

    def answer(self, msg: Message) -> RecordDict:
        self.received.append(msg)
        content, kind = msg.content, msg.metadata.message_type
        if kind == MessageType.QUERY:
            if content[CONFIG][QUERY_KIND] == SETUP:
                self.setup = ConsortiumSetup.from_records(content)
                return acknowledgement(self.setup)
            return self.describe().to_record()
        rc = RoundConfig.from_record(content[CONFIG])
        held = None if self.setup is None else self.setup.digest()
        if held != rc.setup_digest:
            raise SetupMissing(rc.setup_digest, held)
        validation = SiteMetrics(num_examples=30, val_examples=30, val_loss_sum=30 * 0.5,
                                 confusion=confusion_with_hits(self.hits(
                                     rc.server_round - (kind == MessageType.TRAIN))))
        if kind == MessageType.EVALUATE:
            return RecordDict({METRICS: validation.to_record(), SITE: site_record(self.name)})
        if self.refuse_from is not None and rc.server_round >= self.refuse_from:
            return refusal(self.name, "privacy budget epsilon 1 would be exceeded")
        metrics = SiteMetrics(num_examples=self.n_train, train_loss=1.0 / rc.server_round,
                              val_examples=30, val_loss_sum=validation.val_loss_sum,
                              confusion=validation.confusion)
        arrays = ArrayRecord({k: to_array(v.numpy() + np.asarray(self.step, v.numpy().dtype))
                              for k, v in content[ARRAYS].items()})
        return RecordDict({ARRAYS: arrays, METRICS: metrics.to_record(),
                           SITE: site_record(self.name)})


class ScriptedGrid:
    """A Grid over scripted sites (node ids 1, 2, ...); replies are ready when pushed.

    ``drop_on(node, message_type, server_round)``: the node goes offline instead of
    answering that message.
    """

    def __init__(self, sites: list[ScriptedSite]) -> None:
        self.sites = {i + 1: s for i, s in enumerate(sites)}
        self.offline: set[int] = set()
        self.drops: set[tuple[int, str, int]] = set()
        self.replies: dict[str, Message] = {}
        self.sent: list[Message] = []
        self._ids = 0

    def drop_on(self, node: int, message_type: str, server_round: int) -> None:
        self.drops.add((node, message_type, server_round))

    def get_node_ids(self) -> list[int]:
        return sorted(n for n in self.sites if n not in self.offline)

    def push_messages(self, messages) -> list[str]:
        ids = []
        for msg in messages:
            self._ids += 1
            mid = f"m{self._ids}"
            msg.metadata.__dict__["_message_id"] = mid  # as Flower's grids do
            unpack(msg.content)  # the sites answer (and tests read) the weights as sent
            ids.append(mid)
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            config = msg.content.get(CONFIG)
            rnd = int(config.get(SERVER_ROUND, 0)) if config is not None else 0
            if (node, msg.metadata.message_type, rnd) in self.drops:
                self.offline.add(node)
            if node in self.offline:
                continue
            try:
                reply = Message(content=self.sites[node].answer(msg), reply_to=msg)
            except Exception as exc:  # as Flower reports a ClientApp's exception
                reply = Message(Error(code=2, reason=f"{type(exc)}:<'{exc}'>"), reply_to=msg)
            self.replies[mid] = reply
        return ids

    def pull_messages(self, ids) -> list[Message]:
        return [self.replies.pop(i) for i in list(ids) if i in self.replies]

    def sent_of(self, message_type: str, kind: str | None = None) -> list[Message]:
        """Messages of ``message_type`` sent so far (queries: of ``kind``)."""
        return [m for m in self.sent if m.metadata.message_type == message_type
                and (kind is None or m.content[CONFIG].get(QUERY_KIND) == kind)]

