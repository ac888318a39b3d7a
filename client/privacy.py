"""A site's persistent privacy account: budget, DP-SGD ledger, noise calibration.

Opacus starts a fresh accountant with every ``PrivacyEngine``, i.e. every round, so it
cannot be the account of a site that trains over many rounds, runs and restarts. The
site keeps its own: an append-only ledger of every DP-SGD step it has taken,
``STATE_DIR/privacy-ledger.json``::

    {"format": "cancer-alpha-privacy-ledger", "version": 1, "accountant": "rdp",
     "entries": [{"run_id": "...", "round": 1, "noise_multiplier": 1.2,
                  "sample_rate": 0.05, "steps": 80, "timestamp": "2025-...+00:00"}]}

The cumulative epsilon is computed from the whole ledger with an Opacus accountant
(``rdp`` or ``prv``). The budget (epsilon, delta) is the site's own setting, never the
server's; :func:`calibrate_noise` and :func:`check_round` keep every round within it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import numbers
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LEDGER_FILE = "privacy-ledger.json"
LEDGER_FORMAT = "cancer-alpha-privacy-ledger"
LEDGER_VERSION = 1
ACCOUNTANTS = ("rdp", "prv")

# Noise multipliers calibrate_noise searches, in steps of SIGMA_STEP. Calibrated values
# lie on this grid so that rounds calibrated alike get the identical float, which lets
# history() merge them (the accountants' cost grows with distinct (noise, rate) pairs).
SIGMA_MIN = 0.3
SIGMA_MAX = 100.0
SIGMA_STEP = 1e-3
_K_MIN = round(SIGMA_MIN / SIGMA_STEP)  # the grid as integers: sigma = k * SIGMA_STEP
_K_MAX = round(SIGMA_MAX / SIGMA_STEP)

History = list[tuple[float, float, int]]


class LedgerError(ValueError):
    """A privacy ledger cannot be read or trusted; it is left as it is."""


class BudgetError(ValueError):
    """An invalid privacy budget, or one that leaves no room for another round."""


def ledger_path(state_dir: Path) -> Path:
    """Where a site keeps its ledger inside its state directory."""
    return Path(state_dir) / LEDGER_FILE


@dataclass(frozen=True)
class PrivacyBudget:
    """A site's lifetime (epsilon, delta) budget over all its DP-SGD training."""

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        eps, delta = self.epsilon, self.delta
        if not _is_real(eps) or not math.isfinite(eps) or eps <= 0:
            raise BudgetError(f"privacy budget epsilon must be a finite number > 0, got {eps!r}")
        if not _is_real(delta) or not 0 < delta < 1:
            raise BudgetError(f"privacy budget delta must be a number with 0 < delta < 1, "
                              f"got {delta!r}")
        object.__setattr__(self, "epsilon", float(eps))
        object.__setattr__(self, "delta", float(delta))

    @classmethod
    def for_site(
        cls, epsilon: float | None, delta: float | None, n_patients: int
    ) -> PrivacyBudget:
        """The budget of a site with ``n_patients``; delta defaults to 1/(10 n)."""
        if epsilon is None:
            raise BudgetError("privacy budget epsilon is not set (epsilon=None)")
        if delta is None:
            if not _is_int(n_patients) or n_patients < 1:
                raise BudgetError(f"cannot default delta to 1/(10 n) with n_patients="
                                  f"{n_patients!r}")
            delta = 1.0 / (10 * n_patients)
        return cls(epsilon=epsilon, delta=delta)


@dataclass(frozen=True)
class LedgerEntry:
    """The DP-SGD steps of one training round at one site."""

    run_id: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    timestamp: str  # ISO 8601, UTC

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.run_id, str):
            problems.append(f"run_id must be a string, got {self.run_id!r}")
        if not _is_int(self.round) or self.round < 0:
            problems.append(f"round must be an integer >= 0, got {self.round!r}")
        sigma = self.noise_multiplier
        if not _is_real(sigma) or not math.isfinite(sigma) or sigma <= 0:
            problems.append(f"noise_multiplier must be a finite number > 0, got {sigma!r}")
        q = self.sample_rate
        if not _is_real(q) or not 0 < q <= 1:
            problems.append(f"sample_rate must be a number in (0, 1], got {q!r}")
        if not _is_int(self.steps) or self.steps < 0:
            problems.append(f"steps must be an integer >= 0, got {self.steps!r}")
        if not isinstance(self.timestamp, str):
            problems.append(f"timestamp must be an ISO 8601 string, got {self.timestamp!r}")
        else:
            try:
                datetime.fromisoformat(self.timestamp)
            except ValueError:
                problems.append(f"timestamp is not ISO 8601: {self.timestamp!r}")
        if problems:
            raise ValueError("; ".join(problems))
        # numpy scalars pass the checks; store plain Python numbers so they serialize.
        for name, kind in (("round", int), ("noise_multiplier", float),
                           ("sample_rate", float), ("steps", int)):
            object.__setattr__(self, name, kind(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_ENTRY_KEYS = frozenset(f.name for f in fields(LedgerEntry))
_TOP_KEYS = frozenset({"format", "version", "accountant", "entries"})


class PrivacyLedger:
    """Append-only record of every DP-SGD step a site has taken, persisted as JSON.

    Constructing a ledger reads the file when it exists (a missing file is an empty
    ledger, created on the first :meth:`record`); a file that cannot be trusted raises
    :class:`LedgerError` and is never overwritten.
    """

    def __init__(self, path: Path, accountant: str | None = "rdp") -> None:
        """``accountant`` None means the file's accountant (``rdp`` for a new ledger)."""
        if accountant is not None and accountant not in ACCOUNTANTS:
            raise ValueError(f"unknown accountant {accountant!r}; use one of {ACCOUNTANTS}")
        self.path = Path(path)
        entries, stored = _read_ledger(self.path)
        if stored is not None and accountant is not None and stored != accountant:
            # Epsilons of different accountants do not compose: never mix them in one file.
            raise LedgerError(f"{self.path}: the ledger is accounted with {stored!r}, "
                              f"not {accountant!r}")
        self.accountant: str = stored or accountant or "rdp"
        self._entries: tuple[LedgerEntry, ...] = entries

    @classmethod
    def open(cls, path: Path, accountant: str | None = "rdp") -> PrivacyLedger:
        """Read the ledger at ``path``, or start an empty one when there is no file."""
        return cls(path, accountant)

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        return self._entries

    def history(self) -> History:
        """``(noise_multiplier, sample_rate, steps)`` with identical pairs merged.

        Composition does not depend on order, so merged steps give the same epsilon,
        and the accountants' cost is per distinct pair.
        """
        return _merge((e.noise_multiplier, e.sample_rate, e.steps) for e in self._entries)

    def epsilon(self, delta: float) -> float:
        """Cumulative epsilon spent at ``delta`` (0.0 for an empty ledger)."""
        return _epsilon(self.history(), delta, self.accountant)

    def epsilon_after(
        self, noise_multiplier: float, sample_rate: float, steps: int, delta: float
    ) -> float:
        """Epsilon after one more round of ``steps`` at (noise, rate); nothing is recorded."""
        _check_round_args(noise_multiplier, sample_rate, steps)
        return _epsilon(self._projected(noise_multiplier, sample_rate, steps), delta,
                        self.accountant)

    def record(self, entry: LedgerEntry) -> None:
        """Append ``entry`` and persist the ledger atomically.

        The file is re-read first: if it was changed behind this object's back in a way
        that is not an append (truncated, replaced, corrupted), recording is refused
        rather than overwriting the account.
        """
        if not isinstance(entry, LedgerEntry):
            raise TypeError(f"expected a LedgerEntry, got {type(entry).__name__}")
        on_disk, stored = _read_ledger(self.path)
        if stored is not None and stored != self.accountant:
            raise LedgerError(f"{self.path}: the ledger on disk is now accounted with "
                              f"{stored!r}, not {self.accountant!r}; not recording")
        if on_disk[: len(self._entries)] != self._entries:
            raise LedgerError(f"{self.path}: the ledger on disk no longer starts with the "
                              f"{len(self._entries)} entries read earlier; not recording")
        if len(on_disk) > len(self._entries):
            logger.warning("%s: %d entries were appended by another process meanwhile",
                           self.path, len(on_disk) - len(self._entries))
        entries = (*on_disk, entry)
        _write_atomic(self.path, {
            "format": LEDGER_FORMAT,
            "version": LEDGER_VERSION,
            "accountant": self.accountant,
            "entries": [e.to_dict() for e in entries],
        })
        self._entries = entries

    def summary(self, delta: float) -> dict[str, Any]:
        """Path, entry and step counts, cumulative epsilon at ``delta``, distinct runs."""
        return {
            "path": str(self.path),
            "accountant": self.accountant,
            "entries": len(self._entries),
            "steps": sum(e.steps for e in self._entries),
            "epsilon": self.epsilon(delta),
            "delta": delta,
            "runs": list(dict.fromkeys(e.run_id for e in self._entries)),
        }

    def _projected(
        self, noise_multiplier: float, sample_rate: float, steps: int, rounds: int = 1
    ) -> History:
        extra = [(float(noise_multiplier), float(sample_rate), int(steps))] * rounds
        return _merge([*self.history(), *extra])


def calibrate_noise(
    ledger: PrivacyLedger,
    budget: PrivacyBudget,
    sample_rate: float,
    steps_per_round: int,
    rounds_left: int,
) -> float:
    """Smallest noise multiplier that keeps the ledger plus ``rounds_left`` rounds in budget.

    The result lies on a grid of ``SIGMA_STEP`` in [``SIGMA_MIN``, ``SIGMA_MAX``]: it
    fits, and the grid point below it does not (unless it is ``SIGMA_MIN``). Raises
    :class:`BudgetError` when even ``SIGMA_MAX`` does not fit.
    """
    if not _is_int(rounds_left) or rounds_left < 1:
        raise ValueError(f"rounds_left must be an integer >= 1, got {rounds_left!r}")
    _check_round_args(SIGMA_MIN, sample_rate, steps_per_round)

    def fits(accountant: str) -> Callable[[int], bool]:
        def fits_k(k: int) -> bool:
            history = ledger._projected(_sigma(k), sample_rate, steps_per_round, rounds_left)
            return _epsilon(history, budget.delta, accountant) <= budget.epsilon

        return fits_k

    k = _smallest_fitting(fits("rdp"), _K_MAX, bracket=False)
    if ledger.accountant == "prv":
        # PRV costs up to seconds a call, more the smaller the noise; RDP is cheap here
        # (cached) and looser, so its answer is a close first guess to bracket from.
        k = _smallest_fitting(fits("prv"), _K_MAX if k is None else k, bracket=True)
    if k is None:
        spent = ledger.epsilon(budget.delta)
        raise BudgetError(
            f"privacy budget exhausted: spent epsilon {spent:.4g} of {budget.epsilon:.4g} "
            f"(remaining {max(0.0, budget.epsilon - spent):.4g}) at delta {budget.delta:.3g}; "
            f"even noise multiplier {SIGMA_MAX:g} does not fit {rounds_left} more round(s) "
            f"of {steps_per_round} steps at sample rate {sample_rate:.4g}"
        )
    sigma = _sigma(k)
    logger.debug("calibrated noise multiplier %.3f for %d round(s) of %d steps at q=%.4g "
                 "(%s)", sigma, rounds_left, steps_per_round, sample_rate, ledger.accountant)
    return sigma


def check_round(
    ledger: PrivacyLedger,
    budget: PrivacyBudget,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
) -> str | None:
    """None when the round fits the budget, else the reason to refuse it."""
    after = ledger.epsilon_after(noise_multiplier, sample_rate, steps, budget.delta)
    if after <= budget.epsilon:
        return None
    spent = ledger.epsilon(budget.delta)
    return (f"round would bring epsilon to {after:.4g} > budget {budget.epsilon:.4g} "
            f"(spent {spent:.4g}, delta {budget.delta:.3g})")


# --- accounting ---------------------------------------------------------------------


def _merge(items: Any) -> History:
    merged: dict[tuple[float, float], int] = {}
    for sigma, q, steps in items:
        merged[(sigma, q)] = merged.get((sigma, q), 0) + steps
    return [(sigma, q, steps) for (sigma, q), steps in merged.items() if steps > 0]


def _epsilon(history: History, delta: float, accountant: str) -> float:
    if not _is_real(delta) or not 0 < delta < 1:
        raise ValueError(f"delta must be a number with 0 < delta < 1, got {delta!r}")
    if not history:
        return 0.0
    if accountant == "rdp":
        return _rdp_epsilon(history, delta)
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = list(history)
    with warnings.catch_warnings():
        # Overflows in branches np.where discards, and RDP's order warning (PRV sizes its
        # domain with RDP): noise, not problems with the result.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        return float(acc.get_epsilon(delta=delta))


def _rdp_epsilon(history: History, delta: float) -> float:
    """What ``RDPAccountant(history=history).get_epsilon(delta)`` returns, bit for bit.

    The accountant recomputes every pair's RDP curve on each call (~50 ms a pair), which
    a bisection over a long ledger repeats dozens of times; the curves are cached.
    """
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    # Same terms, same order of summation as RDPAccountant.get_privacy_spent.
    rdp = sum([_rdp_per_step(sigma, q) * steps for sigma, q, steps in history])
    with warnings.catch_warnings():
        # "Optimal order is the largest alpha": the bound is valid, merely not the tightest.
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = analysis.get_privacy_spent(
            orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta
        )
    return float(eps)


@functools.lru_cache(maxsize=2048)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> Any:
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    curve = analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                 orders=RDPAccountant.DEFAULT_ALPHAS)
    curve.setflags(write=False)  # shared by every caller of the cache
    return curve


def _smallest_fitting(fits: Callable[[int], bool], guess: int, *, bracket: bool) -> int | None:
    """Smallest grid index k in [_K_MIN, _K_MAX] with ``fits(k)``, None when none fits.

    Assumes ``fits`` is monotone (more noise, less epsilon). With ``bracket`` it walks
    geometrically from ``guess`` to bracket the answer before bisecting, which keeps the
    probes near the answer; without, it bisects the whole range, ``guess`` unused.
    """
    if not bracket:
        if not fits(_K_MAX):
            return None
        if fits(_K_MIN):
            return _K_MIN
        lo, hi = _K_MIN, _K_MAX
    elif fits(guess):
        hi = guess
        while True:
            if hi == _K_MIN:
                return _K_MIN
            lo = max(_K_MIN, int(hi * 0.8))
            if not fits(lo):
                break
            hi = lo
    else:
        lo = guess
        while True:
            if lo == _K_MAX:
                return None
            hi = min(_K_MAX, math.ceil(lo * 1.25))
            if fits(hi):
                break
            lo = hi
    # Invariant: lo does not fit, hi fits.
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _sigma(k: int) -> float:
    # round() makes the float the shortest decimal (1.234, not 1.2340000000000002), so it
    # is the same value after a JSON round trip and merges with its equals.
    return round(k * SIGMA_STEP, 3)


def _check_round_args(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    if not _is_real(noise_multiplier) or not math.isfinite(noise_multiplier) \
            or noise_multiplier <= 0:
        raise ValueError(f"noise_multiplier must be a finite number > 0, "
                         f"got {noise_multiplier!r}")
    if not _is_real(sample_rate) or not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be a number in (0, 1], got {sample_rate!r}")
    if not _is_int(steps) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")


# --- file ---------------------------------------------------------------------------


def _read_ledger(path: Path) -> tuple[tuple[LedgerEntry, ...], str | None]:
    """Entries and accountant of the file at ``path``; ``((), None)`` when there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return (), None
    except (OSError, UnicodeDecodeError) as exc:
        raise LedgerError(f"{path}: cannot read the privacy ledger: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LedgerError(f"{path}: the privacy ledger is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != LEDGER_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise LedgerError(f"{path}: not a privacy ledger (format {found!r}, expected "
                          f"{LEDGER_FORMAT!r})")
    if data.get("version") != LEDGER_VERSION:
        raise LedgerError(f"{path}: privacy ledger version {data.get('version')!r} is not "
                          f"supported (this release reads version {LEDGER_VERSION})")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        # Rewriting the file would drop them: refuse rather than lose information.
        raise LedgerError(f"{path}: unknown keys in the privacy ledger: {sorted(unknown)}")
    accountant = data.get("accountant")
    if accountant not in ACCOUNTANTS:
        raise LedgerError(f"{path}: unknown accountant {accountant!r} (expected one of "
                          f"{ACCOUNTANTS})")
    raw = data.get("entries")
    if not isinstance(raw, list):
        raise LedgerError(f"{path}: 'entries' must be a list, got {type(raw).__name__}")
    entries = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != _ENTRY_KEYS:
            keys = sorted(item) if isinstance(item, dict) else type(item).__name__
            raise LedgerError(f"{path}: entry {i}: expected keys {sorted(_ENTRY_KEYS)}, "
                              f"got {keys}")
        try:
            entries.append(LedgerEntry(**item))
        except ValueError as exc:
            raise LedgerError(f"{path}: entry {i}: {exc}") from exc
    return tuple(entries), accountant


def _write_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write, fsync and rename into place, so the old file survives any failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            # allow_nan=False: a NaN must never reach the file and poison the account.
            json.dump(payload, fh, indent=1, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # The rename itself is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _is_real(value: Any) -> bool:
    """A real number that is not NaN (bools are not numbers here)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) \
        and not math.isnan(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
