"""Which connected nodes take part in a run: the sites of its consortium.

The consortium is formed from the sites that described themselves when the run started;
the run's record (and so its checkpoint) keeps its members by node. A node seen later is
described before it gets any round message:

- a site of the consortium on a new node (a restarted SuperNode) takes part again;
- another site joins from that round on, its description (size, class counts, feature
  coverage) added to the run's record so that the update guard knows its size; except
  under distributed DP, whose noise was planned for the sites that formed the run;
- a node that cannot describe itself gets no round message and is asked again next round:
  an undescribed site's size and labels are unknown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from flwr.serverapp import Grid

from common.protocol import SiteDescription
from server.rounds.consortium import describe_sites, site_summary
from server.rounds.outcome import FederationOutcome

logger = logging.getLogger(__name__)


class Membership:
    """The run's members by node, admitting nodes that appear during the run."""

    def __init__(self, grid: Grid, outcome: FederationOutcome, timeout: float,
                 on_join: Callable[[list[dict]], None]) -> None:
        self.grid, self.outcome, self.timeout = grid, outcome, timeout
        self.members = outcome.members  # node id -> site name, kept in the run's record
        self.refused: dict[int, str] = {}  # node id -> why it takes no part in this run
        self.on_join = on_join  # called with every site's record after a site joins

    def members_among(self, nodes: Iterable[int]) -> set[int]:
        """Those of ``nodes`` that take part, describing the ones not seen before."""
        nodes = list(nodes)
        new = [n for n in nodes if n not in self.members and n not in self.refused]
        if new:
            for node, description in describe_sites(self.grid, new, self.timeout,
                                                    attempts=1).items():
                self._admit(node, description)
        return {n for n in nodes if n in self.members}

    def _admit(self, node: int, description: SiteDescription) -> None:
        known = {s["site"] for s in self.outcome.sites}
        site = description.site
        if site in known:
            self.members[node] = site
            return
        reason = self._refusal(description)
        if reason is not None:
            self.refused[node] = reason
            logger.warning("site %s (node %s) takes no part in this run: %s", site, node, reason)
            return
        self.outcome.sites.append(site_summary(self.outcome.schema, description))
        self.members[node] = site
        logger.info("site %s (node %s) joined the run after it started", site, node)
        self.on_join(self.outcome.sites)

    def _refusal(self, description: SiteDescription) -> str | None:
        if self.outcome.distributed_dp is not None:
            return ("it joined after the run started; distributed DP's noise is planned for "
                    f"the {len(self.outcome.sites)} sites that formed the run")
        if self.outcome.local_dp is not None:
            return ("it joined after the run started; under local DP the class counts were "
                    f"released by the {len(self.outcome.sites)} sites that formed the run")
        if description.private:
            return "it withholds its counts (distributed DP) but this run does not use it"
        labels = list(self.outcome.schema.label_names)
        if list(description.schema.label_names) != labels:
            return (f"its classes {list(description.schema.label_names)} are not the run's "
                    f"{labels}")
        return None
