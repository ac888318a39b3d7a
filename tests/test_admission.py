"""A run's members: the sites that formed it, the same sites on new nodes, and sites that
join later (described first); never a node that could not describe itself."""

from __future__ import annotations

import numpy as np
import pytest

import server.rounds.admission as admission
from common.protocol import SiteDescription
from common.schema import FeatureSchema
from server.rounds.admission import Membership
from server.rounds.consortium import merge_descriptions
from server.rounds.outcome import FederationOutcome

LABELS = ["A", "B"]


def description(site: str, labels: list[str] = LABELS, n: int = 10) -> SiteDescription:
    from common.preprocessing import FeatureStats

    stats = FeatureStats({"mrna": n}, {"mrna": np.full(2, float(n))},
                         {"mrna": np.full(2, 2.0 * n)})
    return SiteDescription(site, FeatureSchema.build({"mrna": ["g1", "g2"]}, labels), n, 2,
                           np.array([n // 2, n - n // 2]), stats)


def with_members(outcome: FederationOutcome) -> FederationOutcome:
    outcome.members = {1: "a", 2: "b"}
    return outcome


@pytest.fixture
def outcome() -> FederationOutcome:
    return FederationOutcome(*merge_descriptions([description("a"), description("b")], "none"))


def scripted(monkeypatch, answers: dict[int, SiteDescription]) -> list[list[int]]:
    """describe_sites answering from ``answers`` (a missing node does not answer)."""
    asked: list[list[int]] = []

    def describe(grid, nodes, timeout, *, attempts=2):
        asked.append(list(nodes))
        return {n: answers[n] for n in nodes if n in answers}

    monkeypatch.setattr(admission, "describe_sites", describe)
    return asked


def test_new_nodes_are_described_once_and_only_members_take_part(monkeypatch, outcome):
    asked = scripted(monkeypatch, {3: description("a"), 4: description("c", n=7),
                                   5: description("d", labels=["A", "X"])})
    joined: list[list[str]] = []
    members = Membership(None, with_members(outcome), 1.0,
                         on_join=lambda sites: joined.append([s["site"] for s in sites]))
    assert members.members_among([1, 2, 3, 4, 5, 6]) == {1, 2, 3, 4}
    assert asked == [[3, 4, 5, 6]]
    # Site c joined with its declared size; d (other classes) was refused; 6 never answered.
    assert [s["site"] for s in outcome.sites] == ["a", "b", "c"]
    assert outcome.sites[-1]["n_train"] == 7 and joined == [["a", "b", "c"]]
    assert "classes" in members.refused[5]
    # Next round: only the silent node is asked again.
    assert members.members_among([1, 2, 3, 4, 5, 6]) == {1, 2, 3, 4}
    assert asked[-1] == [6]


def test_distributed_dp_runs_admit_no_new_site(monkeypatch, outcome):
    scripted(monkeypatch, {3: description("c"), 4: description("a")})
    outcome.distributed_dp = {"noise_plan": {}}
    members = Membership(None, with_members(outcome), 1.0, on_join=lambda sites: None)
    # A site of the run on a new node takes part again; a new site does not.
    assert members.members_among([1, 2, 3, 4]) == {1, 2, 4}
    assert "distributed DP" in members.refused[3]
    assert [s["site"] for s in outcome.sites] == ["a", "b"]
