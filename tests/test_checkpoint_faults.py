"""Real checkpoint write faults: a lost permission and a full disk, made by the kernel.

Each run happens in a forked child that writes the first round's checkpoint normally and
then breaks its own writes for good: it drops root privileges (the run directory is
root-owned 0755, so creating the temporary file fails with EACCES) or lowers
``RLIMIT_FSIZE`` below the checkpoint's size (the write stops mid-file with EFBIG, as on a
full disk). The parent then checks the run went on, the last good checkpoint is the same
bytes and the same round, and no temporary file is left beside it.
"""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import resource
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scripted_grid import ScriptedGrid, ScriptedSite

from common.config import ModelConfig, RunConfig
from server.rounds import load_checkpoint, run_federation, save_checkpoint
from server.rounds.checkpoint import CHECKPOINT_FILE, GLOBAL_WEIGHTS_FILE, SUMMARY_FILE

pytestmark = pytest.mark.usefixtures("task_identity", "one_torch_thread")

NOBODY = 65534
FILE_SIZE_LIMIT = 4000  # bytes
CHECKPOINT_FILES = (CHECKPOINT_FILE, GLOBAL_WEIGHTS_FILE, SUMMARY_FILE)


def _config() -> RunConfig:
    return RunConfig(dp="none", strategy="fedavg", rounds=2, min_sites=2, round_timeout=5.0,
                     seed=0, round_patience=10,
                     model=ModelConfig(d_model=32, n_heads=2, n_layers=1,
                                       tokens_per_modality=1))


def _sites() -> list[ScriptedSite]:
    return [ScriptedSite("site-a", 40, 0.01, seed=1), ScriptedSite("site-b", 20, 0.04, seed=2),
            ScriptedSite("site-c", 20, -0.02, seed=3)]


def _digests(directory: Path) -> dict[str, str]:
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
            for name in CHECKPOINT_FILES}


def _lose_permission(directory: Path) -> None:
    if os.geteuid() == 0:
        # Root ignores file modes: become 'nobody', who may read the checkpoint (0644 in
        # a 0755 directory) but not create files in the root-owned directory.
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    else:
        directory.chmod(0o555)


def _fill_disk(directory: Path) -> None:
    # Without SIGXFSZ ignored the kernel would kill the process instead of failing the write.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # Mid-file, and not on a write-buffer boundary: the limit falls inside one of torch's
    # own writes, which torch.save into a file reports as a bare RuntimeError.
    assert (directory / CHECKPOINT_FILE).stat().st_size > 4 * FILE_SIZE_LIMIT
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, resource.RLIM_INFINITY))


def _run_with_fault(directory: Path, fault: Callable[[Path], None], report) -> None:
    """Child: a 2-round run whose checkpoint writes fail from round 2 on."""
    seen: dict = {"errors": [], "digests": None}

    def checkpoint(ckpt) -> None:
        if seen["digests"] is not None and not seen["errors"]:
            fault(directory)
            assert load_checkpoint(directory).round == 1  # still readable to this process
        try:
            save_checkpoint(directory, ckpt)
        except BaseException as exc:
            seen["errors"].append((ckpt.round, type(exc).__name__,
                                   isinstance(exc, OSError), getattr(exc, "errno", None)))
            raise
        if seen["digests"] is None:
            seen["digests"] = _digests(directory)

    outcome = run_federation(ScriptedGrid(_sites()), _config(), checkpoint=checkpoint)
    report.send({**seen, "rounds": [r["round"] for r in outcome.rounds],
                 "stopped": outcome.stopped})


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A root-owned 0755 directory outside pytest's 0700 base, so 'nobody' can reach it."""
    directory = Path(tempfile.mkdtemp(prefix="checkpoint-faults-"))
    directory.chmod(0o755)
    yield directory
    directory.chmod(0o755)
    shutil.rmtree(directory)


@pytest.mark.parametrize(("fault", "expected_errno"), [
    (_lose_permission, errno.EACCES),
    (_fill_disk, errno.EFBIG),
], ids=["permission-denied", "file-too-large"])
def test_a_real_write_fault_keeps_the_last_good_checkpoint_and_the_run_goes_on(
        run_dir, fault, expected_errno):
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_run_with_fault, args=(run_dir, fault, send))
    child.start()
    child.join(60)
    if child.is_alive():  # never leave a stuck child behind
        child.kill()
        child.join()
    assert child.exitcode == 0, f"the run in the child ended with {child.exitcode}"
    result = receive.recv()

    assert result["rounds"] == [1, 2] and not result["stopped"]
    # Every later write failed with the kernel's error, as an OSError the loop handles.
    assert [e[0] for e in result["errors"]] == [2]
    assert all(is_os_error and code == expected_errno
               for _, _, is_os_error, code in result["errors"]), result["errors"]
    assert _digests(run_dir) == result["digests"]  # the round-1 files, byte for byte
    kept = load_checkpoint(run_dir)
    assert kept is not None and kept.round == 1
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(CHECKPOINT_FILES)
