"""The consortium setup: what a site needs for every round of a run, sent once per run.

After ``describe``, the coordinator merges the sites' schemas, feature statistics and
class counts into the consortium schema, the standardizer and the class weights, and
sends them to every site in one ``setup`` query. The site keeps them in Flower's per-run
``Context.state`` (kept by the SuperNode across the messages of a run, and by the
simulation engine). Each round config names the setup's :meth:`ConsortiumSetup.digest`;
a site without that setup (a restarted SuperNode, a site that joined late) raises
:class:`SetupMissing`, and the coordinator answers by sending the setup again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from common.preprocessing import Standardizer
from common.protocol import CONFIG, QUERY_KIND, SETUP_DIGEST, to_array
from common.schema import FeatureSchema

SETUP = "setup"  # query kind of the setup message
SETUP_MISSING = "consortium setup missing"  # in the error a site raises without it
# Record names, the same in the setup message and in the site's Context.state.
_SETUP_CONFIG = "consortium-setup"
_SETUP_ARRAYS = "consortium-arrays"
_CLASS_WEIGHT = "class-weight"
_CLASS_PRIOR = "class-prior"
_SCHEMA = "schema"
_SITE_PATIENTS = "site-patients"


class SetupMissing(RuntimeError):
    """The site does not hold the consortium setup a round needs."""

    def __init__(self, digest: str, held: str | None) -> None:
        held_text = "none" if held is None else f"setup {held}"
        super().__init__(f"{SETUP_MISSING}: the round needs setup {digest}, the site holds "
                         f"{held_text}")


def is_setup_missing(reason: str) -> bool:
    """True when a site's error ``reason`` says it lacks the round's setup."""
    return SETUP_MISSING in reason


@dataclass(frozen=True)
class ConsortiumSetup:
    """Consortium schema, standardizer and class weights of one run.

    ``class_prior`` (distributed DP): the class frequencies from the noised consortium
    counts, for the logit-adjusted loss (:mod:`client.distributed_dp`).
    ``site_patients`` (local DP): each site's noised count of training patients, which
    the site trains and reports by instead of its true count (:mod:`client.site`).
    """

    schema: FeatureSchema
    standardizer: Standardizer
    class_weight: np.ndarray
    class_prior: np.ndarray | None = None
    site_patients: dict[str, float] | None = None

    def digest(self) -> str:
        """A short content hash: rounds name the setup they were planned with."""
        h = hashlib.sha256(self.schema.content_hash().encode())
        if self.site_patients is not None:
            h.update(json.dumps(self.site_patients, sort_keys=True).encode())
        for key, arr in sorted(self._arrays().items()):
            h.update(key.encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {k: np.asarray(v, dtype=np.float32)
                  for k, v in self.standardizer.to_arrays().items()}
        arrays[_CLASS_WEIGHT] = np.asarray(self.class_weight, dtype=np.float32)
        if self.class_prior is not None:
            arrays[_CLASS_PRIOR] = np.asarray(self.class_prior, dtype=np.float32)
        return arrays

    def records(self) -> RecordDict:
        """The setup's two records: the schema and digest, and the arrays."""
        config = {_SCHEMA: json.dumps(self.schema.to_dict()), SETUP_DIGEST: self.digest()}
        if self.site_patients is not None:
            config[_SITE_PATIENTS] = json.dumps(self.site_patients, sort_keys=True)
        return RecordDict({
            _SETUP_CONFIG: ConfigRecord(config),
            _SETUP_ARRAYS: ArrayRecord({k: to_array(v) for k, v in self._arrays().items()}),
        })

    def to_message_content(self) -> RecordDict:
        """The ``setup`` query's content."""
        content = self.records()
        content[CONFIG] = ConfigRecord({QUERY_KIND: SETUP})
        return content

    @classmethod
    def from_records(cls, content: RecordDict) -> ConsortiumSetup:
        config, arrays = content[_SETUP_CONFIG], content[_SETUP_ARRAYS]
        values = {k: v.numpy() for k, v in arrays.items()}
        weight = values.pop(_CLASS_WEIGHT)
        prior = values.pop(_CLASS_PRIOR, None)
        patients = (None if _SITE_PATIENTS not in config
                    else {str(k): float(v)
                          for k, v in json.loads(str(config[_SITE_PATIENTS])).items()})
        return cls(FeatureSchema.from_dict(json.loads(str(config[_SCHEMA]))),
                   Standardizer.from_arrays(values), weight, prior, patients)

    def store(self, state: RecordDict) -> None:
        """Keep the setup in a site's per-run ``Context.state``."""
        for key, record in self.records().items():
            state[key] = record

    @classmethod
    def stored(cls, state: RecordDict, digest: str) -> ConsortiumSetup:
        """The setup named ``digest`` from ``Context.state``; :class:`SetupMissing` if absent."""
        config = state.get(_SETUP_CONFIG)
        held = None if config is None else str(config[SETUP_DIGEST])
        if held != digest or _SETUP_ARRAYS not in state:
            raise SetupMissing(digest, held)
        return cls.from_records(state)


def noised_patients(setup: ConsortiumSetup, site: str) -> float:
    """Local DP: ``site``'s noised count of training patients from the setup."""
    if setup.site_patients is None or site not in setup.site_patients:
        raise ValueError(f"local DP: the consortium setup holds no noised patient count for "
                         f"site {site!r}")
    return setup.site_patients[site]


def setup_digest_of(content: RecordDict) -> str:
    """The digest a site acknowledged in its reply to ``setup``."""
    return str(content[_SETUP_CONFIG][SETUP_DIGEST])


def acknowledgement(setup: ConsortiumSetup) -> RecordDict:
    """A site's reply to ``setup``: the digest of what it stored."""
    return RecordDict({_SETUP_CONFIG: ConfigRecord({SETUP_DIGEST: setup.digest()})})
