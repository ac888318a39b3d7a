"""The site's privacy account against faults: lost ledgers, repeated requests, leaks.

* :func:`check_acknowledged`: the coordinator sends with every round the epsilon each
  site reported so far, in this run and earlier ones (:mod:`common.spend_record`,
  :mod:`server.rounds.spend_book`). A ledger showing less
  was deleted, truncated or replaced: the site refuses to train until it is restored.
* :func:`replayed_release`: a request the site already answered (a coordinator resumed
  from its checkpoint) is answered with the same release, at no new cost
  (:mod:`client.privacy.replay`).
* :func:`ledger_error_reply`: a ledger that cannot be read or written is reported to
  the coordinator with a generic reason; paths and contents stay in the site's log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Error, Message

from client.dp import RoundRefused
from client.privacy.replay import Released, ReleaseStore, request_digest
from common.spend_record import run_key_of, spend_of

if TYPE_CHECKING:
    from client.distributed_round import Release
    from client.dp import SitePrivacy
    from common.protocol import RoundConfig

logger = logging.getLogger(__name__)

LEDGER_UNAVAILABLE = ("the site's privacy ledger cannot be read or updated; the site "
                      "operator finds the details in the site's log")
# Relative slack for the coordinator's copy of an epsilon (it went through JSON and back).
TOLERANCE = 1e-9


def ledger_error_reply(msg: Message, exc: Exception) -> Message:
    """An error reply with a generic reason; the detail (path, contents) is logged here."""
    from client.app import CLIENT_APP_RAISED_EXCEPTION

    logger.error("privacy ledger: %s", exc)
    return Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=LEDGER_UNAVAILABLE),
                   reply_to=msg)


def behind_reason(spent: float, acknowledged: float | None) -> str | None:
    """Why a ledger showing ``spent`` cannot be trusted when the coordinator recorded
    ``acknowledged`` for the site, or None when it can."""
    if acknowledged is None or spent >= acknowledged * (1 - TOLERANCE):
        return None
    return (f"the privacy ledger shows epsilon {spent:.4g} spent, but the coordinator "
            f"recorded {acknowledged:.4g} for this site: the ledger was "
            "deleted, truncated or replaced. Restore it from its backup (`cancer-alpha "
            "site backup restore`) before the site trains again")


def check_acknowledged(privacy: SitePrivacy | None, site: str, config: Mapping[str, Any]
                       ) -> None:
    """Raise :class:`RoundRefused` when the ledger shows less than the coordinator
    recorded for ``site``."""
    if privacy is None:
        return
    reason = behind_reason(privacy.ledger.epsilon(privacy.budget.delta),
                           spend_of(config, site))
    if reason is not None:
        logger.error("%s (%s)", reason, privacy.ledger.path)
        raise RoundRefused(reason)


def replayed(privacy: SitePrivacy, rc: RoundConfig, config: Mapping[str, Any],
             inputs: list[np.ndarray], release: Callable[[], Released]
             ) -> tuple[Released, bool]:
    """The release answering this request: the one kept from an earlier answer to the
    same request of the same run, else ``release()`` (which charges the ledger), kept
    for next time. Returns the release and whether it was replayed. A coordinator that
    names no run (``run-key``) gets a fresh release every time."""
    run = run_key_of(config)
    if not run:
        return release(), False
    store = ReleaseStore(privacy.ledger.path.parent)
    digest = request_digest(run, rc, inputs)
    store.prune(run, rc.server_round)
    kept = store.get(digest)
    if kept is not None:
        logger.info("round %d (%s): the coordinator asks again for a release already sent; "
                    "sending it again (no new privacy cost)", rc.server_round, rc.task)
        return kept, True
    fresh = release()
    store.put(digest, run, rc.server_round, fresh)
    return fresh, False


def replayed_release(privacy: SitePrivacy, rc: RoundConfig, config: Mapping[str, Any],
                     inputs: list[np.ndarray], release: Callable[[], Release]) -> Release:
    """:func:`replayed` for a distributed-DP release; its epsilon is the ledger's now."""
    from client.distributed_round import Release

    def fresh() -> Released:
        out = release()
        return Released(out.vector, {"delta": out.delta})

    kept, _ = replayed(privacy, rc, config, inputs, fresh)
    delta = float(kept.meta["delta"])
    return Release(kept.arrays, privacy.ledger.epsilon(delta), delta)
