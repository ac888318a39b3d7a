import { act, screen, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { DETAIL, SITE_A, renderAt, round } from "./render";

class FakeEventSource {
  static CLOSED = 2;
  static last: FakeEventSource | null = null;
  readyState = 1;
  onopen: (() => void) | null = null;
  onerror: (() => void) | null = null;
  private listeners: Record<string, ((e: MessageEvent) => void)[]> = {};
  constructor(readonly url: string) { FakeEventSource.last = this; }
  addEventListener(type: string, fn: (e: MessageEvent) => void) {
    (this.listeners[type] ??= []).push(fn);
  }
  emit(type: string, data: unknown) {
    (this.listeners[type] ?? []).forEach((fn) => fn(new MessageEvent(type, { data: JSON.stringify(data) })));
  }
  close() { this.readyState = FakeEventSource.CLOSED; }
}

const RUNNING = { ...DETAIL, status: "running", finished_at: null, rounds_done: 1, rounds: [round(1, 0.5)],
                  rejections: [] };

describe("live run page", () => {
  beforeEach(() => { vi.stubGlobal("EventSource", FakeEventSource); FakeEventSource.last = null; });
  afterEach(() => vi.unstubAllGlobals());

  it("shows rounds, per-site epsilon and rejections of a finished run", async () => {
    renderAt("/runs/run-1", { "/api/runs/run-1": { body: DETAIL } });
    expect(await screen.findByTestId("progress")).toHaveTextContent("Round 2 of 2");
    const sites = screen.getByRole("table", { name: "sites in this run" });
    expect(within(sites).getByText("3.00")).toBeInTheDocument(); // site-b, round 2
    expect(within(sites).getAllByText("8.00")).toHaveLength(2);
    expect(screen.getByText("update norm above the clip bound")).toBeInTheDocument();
    expect(FakeEventSource.last).toBeNull(); // a finished run needs no stream
  });

  it("adds rounds as they stream in and stops listening when the run ends", async () => {
    const { fetchMock } = renderAt("/runs/run-1", { "/api/runs/run-1": { body: RUNNING } });
    expect(await screen.findByTestId("progress")).toHaveTextContent("Round 1 of 2");
    const source = FakeEventSource.last!;
    expect(source.url).toBe("/api/runs/run-1/events?token=test-token");
    act(() => {
      source.emit("round", round(2, 0.61));
      source.emit("status", { ...RUNNING, rounds_done: 2 });
    });
    const rounds = screen.getByRole("table", { name: "rounds" });
    expect(within(rounds).getByText("0.610")).toBeInTheDocument();
    expect(screen.getByTestId("progress")).toHaveTextContent("Round 2 of 2");
    const calls = fetchMock.mock.calls.length;
    act(() => source.emit("status", { ...RUNNING, status: "finished", rounds_done: 2 }));
    expect(source.readyState).toBe(FakeEventSource.CLOSED);
    expect(fetchMock.mock.calls.length).toBeGreaterThan(calls); // final detail reloaded
  });

  it("stops a running run", async () => {
    const { fetchMock } = renderAt("/runs/run-1", {
      "/api/runs/run-1": { body: RUNNING },
      "POST /api/runs/run-1/stop": { body: { ...RUNNING, status: "stopped" } },
    });
    await userEvent.click(await screen.findByRole("button", { name: "Stop run" }));
    expect(await screen.findByRole("button", { name: "Resume run" })).toBeInTheDocument();
    expect(fetchMock.mock.calls.map(([u]) => u)).toContain("/api/runs/run-1/stop");
  });

  it("says when no round has finished", async () => {
    renderAt("/runs/run-1", { "/api/runs/run-1": { body: { ...RUNNING, rounds_done: 0, rounds: [] } } });
    expect(await screen.findByText("No round has finished yet.")).toBeInTheDocument();
    expect(screen.getByText("No site has reported yet.")).toBeInTheDocument();
  });

  it("shows the server's error", async () => {
    renderAt("/runs/nope", { "/api/runs/nope": { status: 404, body: { detail: "no run 'nope'" } } });
    expect(await screen.findByText("no run 'nope'")).toBeInTheDocument();
  });

  it("gives a site token no stop button", async () => {
    renderAt("/runs/run-1", { "/api/runs/run-1": { body: RUNNING } }, SITE_A);
    await screen.findByTestId("progress");
    expect(screen.queryByRole("button", { name: "Stop run" })).toBeNull();
  });
});
