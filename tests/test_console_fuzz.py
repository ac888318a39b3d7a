"""The console API under schemathesis: requests generated from its own OpenAPI schema,
with a lead token, a site token and none, never get a server error (5xx)."""

from __future__ import annotations

import pytest
from test_console_api import RecordingControl, write_finished_run

from server.console_api.app import create_app
from server.console_api.service import open_state
from server.console_api.templates import Template, save
from simulations.consortium import make_pki

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

SECRET_ENV = "CANCER_ALPHA_CONSOLE_JWT_SECRET"
# The live event stream of a running run ends only when the client leaves, which an
# in-process client never does: it is covered by the event-stream tests instead.
_STREAM = "/api/runs/{run_id}/events"


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    root = tmp_path_factory.mktemp("console-fuzz")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SECRET_ENV, "f" * 48)
        pki = make_pki(root / "pki", ("site-a", "site-b"))
        write_finished_run(root / "coordinator" / "runs", "past")
        state = open_state(root / "coordinator", pki.root)
        save(state.templates.directory, Template("tiny", "two rounds", {"rounds": 2}))
        state.control = RecordingControl(state)
        state.poll_interval = 0.01
        app = create_app(state, console_dist=root / "no-dist")
        tokens = {"lead": state.tokens.issue("lena", "lead"),
                  "site": state.tokens.issue("site-a", "site"), "none": None}
        yield app, tokens
        state.store.close()


@pytest.fixture(scope="module")
def any_request(console):
    """A strategy of requests to every operation of the API's OpenAPI schema."""
    from hypothesis import strategies as st

    schema = schemathesis.openapi.from_asgi("/api/openapi.json", console[0]).exclude(
        path=_STREAM)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    return st.one_of([op.as_strategy() for op in operations])


def test_console_api_never_answers_5xx(console, any_request):
    from hypothesis import given
    from hypothesis import strategies as st

    _, tokens = console

    @settings(max_examples=120, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data) -> None:
        case = data.draw(any_request)
        for caller, token in tokens.items():
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            response = case.call(headers=headers)
            assert response.status_code < 500, (caller, case.method, case.formatted_path,
                                                response.status_code, response.text[:300])

    check()
