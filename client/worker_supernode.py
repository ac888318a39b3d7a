"""Flower's SuperNode, unchanged but for its fixed waits, beside the site worker.

Same arguments as ``flower-supernode``. Before it starts, the SuperNode's loop is paced
(:func:`common.flower_pacing.pace_supernode`): it asks the coordinator for work 0.1 s
after finishing a message (growing back to Flower's 3 s while none comes) instead of
every 3 s, looks for the worker's reply every 50 ms instead of 0.5 s, and retries a
weights object that is not there yet after 50 ms instead of 1 s. A round otherwise
waits for the slowest of these per site.

    python -m client.worker_supernode --superlink HOST:PORT ... (flower-supernode's flags)
"""

from __future__ import annotations

import sys


def main() -> None:
    from flwr.supernode import start_client_internal as loop
    from flwr.supernode.cli import flower_supernode

    from common.flower_pacing import pace_supernode

    pace_supernode(loop)
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
