"""A site's persistent privacy account: budget, DP-SGD ledger, noise calibration.

Opacus starts a fresh accountant with every ``PrivacyEngine``, i.e. every round, so it
cannot be the account of a site that trains over many rounds, runs and restarts. The
site keeps its own: an append-only ledger of every DP-SGD step it has taken
(:mod:`~client.privacy.ledger`, ``STATE_DIR/privacy-ledger.json``), each entry with the
delta it was accounted at.

The cumulative epsilon is computed from the whole ledger with an Opacus accountant,
``rdp`` or ``prv`` (:mod:`~client.privacy.accounting`). The budget (epsilon, delta) is
the site's own setting, never the server's; :func:`calibrate_noise` and
:func:`check_round` keep every round within it (:mod:`~client.privacy.calibration`).
A request the site already answered (a resumed coordinator) gets the release it sent,
at no new cost (:mod:`~client.privacy.replay`).
"""

from client.privacy.accounting import ACCOUNTANTS, History, epsilon_of, merge_history
from client.privacy.calibration import (
    SIGMA_MAX,
    SIGMA_MIN,
    SIGMA_STEP,
    BudgetError,
    PrivacyBudget,
    calibrate_noise,
    check_round,
)
from client.privacy.ledger import (
    LEDGER_FILE,
    LEDGER_FORMAT,
    LEDGER_VERSION,
    LedgerEntry,
    LedgerError,
    PrivacyLedger,
    ledger_path,
)

__all__ = [
    "ACCOUNTANTS", "LEDGER_FILE", "LEDGER_FORMAT", "LEDGER_VERSION", "SIGMA_MAX", "SIGMA_MIN",
    "SIGMA_STEP", "BudgetError", "History", "LedgerEntry", "LedgerError", "PrivacyBudget",
    "PrivacyLedger", "calibrate_noise", "check_round", "epsilon_of", "ledger_path",
    "merge_history",
]
