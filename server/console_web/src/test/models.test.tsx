import { fireEvent, screen, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it } from "vitest";
import { MODEL, renderAt } from "./render";

describe("models page", () => {
  it("lists models with metrics and lineage", async () => {
    renderAt("/models", { "/api/models": { body: [MODEL] } });
    const table = await screen.findByRole("table", { name: "models" });
    expect(within(table).getByText(/f1_macro: 0.61/)).toBeInTheDocument();
    expect(within(table).getByText(/parent: cancer-alpha:2/)).toBeInTheDocument();
  });

  it("says when the registry is empty", async () => {
    renderAt("/models", { "/api/models": { body: [] } });
    expect(await screen.findByText(/No model is registered yet/)).toBeInTheDocument();
  });

  it("shows the server's error", async () => {
    renderAt("/models", { "/api/models": { status: 500, body: { detail: "registry unreadable" } } });
    expect(await screen.findByText("registry unreadable")).toBeInTheDocument();
  });

  it("promotes a model with a reason", async () => {
    let promoted = false;
    const { fetchMock } = renderAt("/models", {
      "/api/models": () => ({ body: [{ ...MODEL, promoted, stage: promoted ? "production" : "candidate",
                                       promotion_reason: promoted ? "best F1" : null }] }),
      "POST /api/models/cancer-alpha%3A3/promote": () => { promoted = true; return { body: MODEL }; },
    });
    await userEvent.click(await screen.findByRole("button", { name: "Promote cancer-alpha:3" }));
    fireEvent.change(screen.getByRole("textbox", { name: /reason/i }), { target: { value: "best F1" } });
    await userEvent.click(screen.getByRole("button", { name: "Promote" }));
    expect(await screen.findByText("best F1")).toBeInTheDocument();
    const post = fetchMock.mock.calls.find(([, i]) => (i as RequestInit)?.method === "POST");
    expect(JSON.parse((post?.[1] as RequestInit).body as string)).toEqual({ reason: "best F1" });
  });
});
