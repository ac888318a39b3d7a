"""The coordinator console in a real browser (Debian's chromium driven by Playwright)
against the real coordinator service with two real sites on loopback: a lead logs in,
sees both sites online, starts a run and watches its rounds arrive live, opens the
finished run, promotes its model, finds the promotion in the audit log and verifies the
chain; a site token is refused the other site's page. A screenshot of every page is
saved (``$CONSOLE_SCREENSHOTS``, else the test's temporary directory)."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
from conftest import running_in_ci

CHROMIUM = Path("/usr/bin/chromium")
DIST = Path(__file__).resolve().parents[1] / "server" / "console_web" / "dist" / "index.html"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
TIMEOUT_MS = 240_000  # a federated round on a loaded 2-core machine

pytestmark = pytest.mark.e2e


def _require(ok: bool, why: str) -> None:
    if not ok:
        if running_in_ci():
            pytest.fail(f"{why} (CI installs it: .ci/run)")
        pytest.skip(why)


@pytest.fixture
def browser_page(tmp_path):
    _require(CHROMIUM.exists(), f"{CHROMIUM} is missing (apt-get install chromium)")
    _require(DIST.exists(),
             "the console is not built (npm ci && npm run build in server/console_web)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
        page.set_default_timeout(TIMEOUT_MS)
        try:
            yield page
        finally:
            browser.close()


def _screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _api(base_url: str, path: str, token: str) -> object:
    request = urllib.request.Request(f"{base_url}/api{path}",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def _nav(page, label: str):
    """The navigation bar's link to a page."""
    nav = page.get_by_role("navigation", name="console")
    return nav.get_by_role("link", name=label, exact=True)


def _log_in(page, base_url: str, token: str) -> None:
    page.goto(f"{base_url}/console/")
    page.get_by_label("Access token").fill(token)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("heading", name="Overview").wait_for()


def _log_in_by_keyboard(page, base_url: str, token: str) -> None:
    """Log in and open the Sites page with the keyboard alone; the focused link is
    outlined."""
    from playwright.sync_api import expect

    page.goto(f"{base_url}/console/")
    expect(page.get_by_label("Access token")).to_be_focused()
    page.keyboard.type(token)
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Overview").wait_for()
    sites = _nav(page, "Sites")
    for _ in range(30):
        page.keyboard.press("Tab")
        if sites.evaluate("el => el === document.activeElement"):
            break
    else:
        pytest.fail("the Sites link cannot be reached with Tab")
    assert sites.evaluate("el => getComputedStyle(el).outlineStyle") == "solid"
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Sites", exact=True).wait_for()


def _filter_and_compare(page, finished: str, stopped: str) -> None:
    """Filter the runs list by status, then compare the two runs' curves."""
    from playwright.sync_api import expect

    runs = page.get_by_role("table", name="runs")
    for status, shown, hidden in (("finished", finished, stopped),
                                  ("stopped", stopped, finished)):
        page.get_by_role("combobox", name=re.compile("^Status")).click()
        page.get_by_role("option", name=status, exact=True).click()
        expect(runs.get_by_role("link", name=shown, exact=True)).to_be_visible()
        expect(runs.get_by_role("link", name=hidden, exact=True)).to_have_count(0)
    page.get_by_role("combobox", name=re.compile("^Status")).click()
    page.get_by_role("option", name="all", exact=True).click()
    for run in (finished, stopped):
        runs.get_by_role("checkbox", name=f"compare {run}").check()
    chart = page.get_by_role("figure", name=f"macro-F1 per round: {finished} vs {stopped}")
    expect(chart).to_be_visible()
    # one line and one legend entry per run; the finished run's line has a point per round
    expect(chart.locator(".recharts-legend-item")).to_have_count(2)
    for run in (finished, stopped):
        expect(chart.locator(".recharts-legend-item").filter(has_text=run)).to_have_count(1)
    data = page.get_by_role("table", name=re.compile("^macro-F1 per round: .* \\(data\\)$"))
    expect(data.get_by_role("columnheader", name=f"{finished} f1_macro")).to_have_count(1)
    expect(data.get_by_role("columnheader", name=f"{stopped} f1_macro")).to_have_count(1)
    expect(chart.locator(".recharts-line-dots").first.locator("circle")).to_have_count(2)


def test_lead_runs_watches_promotes_and_audits(console_service, browser_page, tmp_path):
    from playwright.sync_api import expect

    base_url, lead_token, _admin_token, site_token = console_service
    page, shots = browser_page, _screenshots(tmp_path)
    expect.set_options(timeout=TIMEOUT_MS)

    page.goto(f"{base_url}/console/")
    page.get_by_role("heading", name="Coordinator console").wait_for()
    page.screenshot(path=shots / "login.png")
    _log_in(page, base_url, lead_token)
    assert page.evaluate("sessionStorage.length") == 1
    page.screenshot(path=shots / "overview.png")

    # both sites online
    _nav(page, "Sites").click()
    sites = page.get_by_role("table", name="sites")
    for site in ("site-a", "site-b"):
        expect(sites.get_by_role("row").filter(has_text=site).get_by_text("online")).to_be_visible()
    page.screenshot(path=shots / "sites.png")

    # start a run; its rounds arrive over the event stream while the page stays open
    _nav(page, "Runs").click()
    page.get_by_role("combobox", name="Template").click()
    page.get_by_role("option", name=re.compile("^e2e")).click()
    page.get_by_role("button", name="Start run").click()
    heading = page.get_by_role("heading", name=re.compile(r"^Run "))
    heading.wait_for()
    run_id = heading.inner_text().removeprefix("Run ").strip()
    loads = []
    page.on("framenavigated", lambda frame: loads.append(frame.url))
    expect(page.get_by_text("live updates: open")).to_be_visible()
    expect(page.get_by_test_id("progress")).to_have_text(re.compile(r"Round [12] of 2"))
    expect(page.get_by_role("table", name="rounds").get_by_role("row")).not_to_have_count(1)
    page.screenshot(path=shots / "run-live.png")
    expect(page.get_by_test_id("progress")).to_have_text("Round 2 of 2")
    expect(page.locator("main").get_by_text("finished", exact=True)).to_be_visible()
    assert loads == [], f"the run page reloaded instead of streaming: {loads}"

    # the finished run from the list
    _nav(page, "Runs").click()
    page.get_by_role("link", name=run_id).click()
    expect(page.get_by_role("table", name="sites in this run")).to_contain_text("site-b")

    # a second run, stopped at once: the list's filter and the comparison need two runs
    _nav(page, "Runs").click()
    page.get_by_role("combobox", name="Template").click()
    page.get_by_role("option", name=re.compile("^e2e")).click()
    page.get_by_label("Run name (optional)").fill("stopped-early")
    page.get_by_role("button", name="Start run").click()
    page.get_by_role("heading", name="Run stopped-early").wait_for()
    page.get_by_role("button", name="Stop run").click()
    expect(page.locator("main").get_by_text("stopped", exact=True)).to_be_visible()
    _nav(page, "Runs").click()
    _filter_and_compare(page, run_id, "stopped-early")
    page.screenshot(path=shots / "runs.png")

    # promote the run's model
    _nav(page, "Models").click()
    row = page.get_by_role("table", name="models").get_by_role("row").filter(
        has=page.get_by_role("link", name=run_id))
    row.get_by_role("button", name=re.compile("^Promote ")).click()
    page.get_by_role("textbox", name="Reason").fill("best macro-F1 of the end-to-end run")
    page.get_by_role("dialog").get_by_role("button", name="Promote").click()
    expect(row).to_contain_text("best macro-F1 of the end-to-end run")
    page.screenshot(path=shots / "models.png")

    # the audit log holds the promotion, and its chain verifies
    _nav(page, "Audit").click()
    audit = page.get_by_role("table", name="audit entries")
    expect(audit.get_by_role("row").filter(has_text="registry.promote")).to_contain_text("lena")
    expect(audit.get_by_role("row").filter(has_text="run.start").first).to_contain_text("lena")
    page.get_by_role("button", name="Verify chain").click()
    expect(page.get_by_text(re.compile(r"^Chain intact: \d+ entries verified\.$"))).to_be_visible()
    page.screenshot(path=shots / "audit.png")

    # a site token: no action buttons, and the other site's page is refused
    page.get_by_role("button", name="Log out").click()
    _log_in_by_keyboard(page, base_url, site_token)
    assert _nav(page, "Audit").count() == 0
    assert _nav(page, "Sites").count() == 1
    page.goto(f"{base_url}/console/sites/site-b")
    expect(page.get_by_text(re.compile("^Access refused"))).to_be_visible()
    page.screenshot(path=shots / "site-refused.png")
    assert [s["name"] for s in _api(base_url, "/sites", site_token)] == ["site-a"]
    page.goto(f"{base_url}/console/runs/{run_id}")
    expect(page.get_by_role("table", name="sites in this run")).to_contain_text("site-a")
    expect(page.get_by_role("table", name="sites in this run")).not_to_contain_text("site-b")
    assert page.get_by_role("button", name=re.compile("Stop run|Resume run")).count() == 0
    assert sorted(p.name for p in shots.glob("*.png")) == sorted(
        ["login.png", "overview.png", "sites.png", "run-live.png", "runs.png", "models.png",
         "audit.png", "site-refused.png"])


def _finished_run(http, sites: tuple[str, ...]) -> str:
    """The session's finished run (the browser test's), else one started here."""
    finished = http.get("/api/runs", params={"status": "finished"}).json()
    if finished:
        return finished[0]["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # both sites registered and polled as online
        if sorted(s["name"] for s in http.get("/api/sites").json() if s["online"]) == \
                list(sites):
            break
        time.sleep(0.5)
    started = http.post("/api/runs", json={"template": "e2e", "name": "api-run"})
    assert started.status_code == 200, started.text
    return started.json()["id"]


def test_api_streams_and_reports_a_real_run(console_service):
    """The API over the real run: its event stream, detail, model, audit and scope."""
    base, lead, _admin, site = console_service
    sites = ("site-a", "site-b")
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {lead}"},
                      timeout=30) as http:
        assert sorted(s["name"] for s in http.get("/api/sites").json() if s["online"]) == \
            list(sites)
        run_id = _finished_run(http, sites)
        kinds, rounds = [], []
        with http.stream("GET", f"/api/runs/{run_id}/events", timeout=TIMEOUT_MS / 1000) \
                as stream:
            kind = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    kinds.append(kind)
                    if kind == "round":
                        rounds.append(json.loads(line[6:]))
                    elif json.loads(line[6:])["status"] != "running":
                        break
        assert [r["round"] for r in rounds] == [1, 2]
        assert kinds[-1] != "round"
        assert all(s["participated"] for r in rounds for s in r["sites"])
        assert sorted(s["name"] for s in rounds[-1]["sites"]) == list(sites)
        detail = http.get(f"/api/runs/{run_id}").json()
        assert detail["status"] == "finished", detail
        assert run_id in [m["run_id"] for m in http.get("/api/models").json()]
        starts = [e for e in http.get("/api/audit").json() if e["action"] == "run.start"]
        assert run_id in json.dumps(starts)
        other = http.get("/api/sites", headers={"Authorization": f"Bearer {site}"}).json()
        assert [s["name"] for s in other] == ["site-a"]
