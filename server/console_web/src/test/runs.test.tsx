import { screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it } from "vitest";
import { DETAIL, RUN, SITE_A, renderAt, round } from "./render";

const RUN_2 = { ...RUN, id: "run-2", status: "stopped", best_f1_macro: 0.4 };
const TEMPLATES = { body: [{ name: "e2e", description: "two short rounds", config: {} }] };

describe("runs page", () => {
  it("lists runs and filters them by status", async () => {
    const { fetchMock } = renderAt("/runs", {
      "/api/runs": { body: [RUN, RUN_2] }, "/api/templates": TEMPLATES,
      "/api/runs?status=stopped": { body: [RUN_2] },
    });
    const table = await screen.findByRole("table", { name: "runs" });
    expect(within(table).getByRole("link", { name: "run-1" })).toBeInTheDocument();
    expect(within(table).getByText("0.610")).toBeInTheDocument();
    await userEvent.click(screen.getByRole("combobox", { name: "Status" }));
    await userEvent.click(await screen.findByRole("option", { name: "stopped" }));
    await waitFor(() => expect(screen.queryByRole("link", { name: "run-1" })).toBeNull());
    expect(screen.getByRole("link", { name: "run-2" })).toBeInTheDocument();
    expect(fetchMock.mock.calls.map(([u]) => u)).toContain("/api/runs?status=stopped");
  });

  it("says when no run matches", async () => {
    renderAt("/runs", { "/api/runs": { body: [] }, "/api/templates": TEMPLATES });
    expect(await screen.findByText("No run yet.")).toBeInTheDocument();
  });

  it("shows the server's error", async () => {
    renderAt("/runs", { "/api/runs": { status: 500, body: { detail: "run directory unreadable" } },
                        "/api/templates": TEMPLATES });
    expect(await screen.findByText("run directory unreadable")).toBeInTheDocument();
  });

  it("compares two runs' curves", async () => {
    renderAt("/runs", {
      "/api/runs": { body: [RUN, RUN_2] }, "/api/templates": TEMPLATES,
      "/api/runs/run-1": { body: DETAIL },
      "/api/runs/run-2": { body: { ...DETAIL, ...RUN_2, rounds: [round(1, 0.3), round(2, 0.4)] } },
    });
    await userEvent.click(await screen.findByRole("checkbox", { name: "compare run-1" }));
    await userEvent.click(screen.getByRole("checkbox", { name: "compare run-2" }));
    const data = await screen.findByRole("table", { name: /run-1 vs run-2 \(data\)/ });
    expect(within(data).getByRole("columnheader", { name: "run-1 f1_macro" })).toBeInTheDocument();
    expect(within(data).getByRole("columnheader", { name: "run-2 f1_macro" })).toBeInTheDocument();
    expect(within(data).getByText("0.3")).toBeInTheDocument();
  });

  it("starts a run from a template", async () => {
    const { fetchMock } = renderAt("/runs", {
      "/api/runs": { body: [] }, "/api/templates": TEMPLATES,
      "POST /api/runs": { body: { ...RUN, id: "run-9", status: "running", rounds_done: 0 } },
      "/api/runs/run-9": { body: { ...DETAIL, id: "run-9", status: "finished", rounds: [] } },
    });
    await userEvent.click(await screen.findByRole("combobox", { name: "Template" }));
    await userEvent.click(await screen.findByRole("option", { name: /e2e/ }));
    await userEvent.click(screen.getByRole("button", { name: "Start run" }));
    expect(await screen.findByRole("heading", { name: "Run run-9" })).toBeInTheDocument();
    const post = fetchMock.mock.calls.find(([u, i]) => u === "/api/runs" && (i as RequestInit).method === "POST");
    expect(JSON.parse((post?.[1] as RequestInit).body as string)).toEqual({ template: "e2e", name: null });
  });

  it("gives a site token no start form", async () => {
    renderAt("/runs", { "/api/runs": { body: [RUN] } }, SITE_A);
    await screen.findByRole("table", { name: "runs" });
    expect(screen.queryByRole("button", { name: "Start run" })).toBeNull();
  });
});
