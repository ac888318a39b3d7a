import { fireEvent, screen, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it } from "vitest";
import { renderAt } from "./render";

const ENTRY = { seq: 7, time: "2026-11-28T10:00:00Z", actor: "lena", role: "lead", action: "run.start",
                detail: { run: "run-1" }, hash: "abcdef0123456789" };

describe("audit page", () => {
  it("lists entries and filters by action and actor", async () => {
    const { fetchMock } = renderAt("/audit", {
      "/api/audit": { body: [ENTRY, { ...ENTRY, seq: 8, action: "registry.promote" }] },
      "/api/audit?action=run.start&actor=lena": { body: [ENTRY] },
    });
    const table = await screen.findByRole("table", { name: "audit entries" });
    expect(within(table).getByText("registry.promote")).toBeInTheDocument();
    fireEvent.change(screen.getByRole("textbox", { name: "Action" }), { target: { value: "run.start" } });
    fireEvent.change(screen.getByRole("textbox", { name: "Actor" }), { target: { value: "lena" } });
    await userEvent.click(screen.getByRole("button", { name: "Filter" }));
    expect(await screen.findByText("run.start")).toBeInTheDocument();
    expect(screen.queryByText("registry.promote")).toBeNull();
    expect(fetchMock.mock.calls.map(([u]) => u)).toContain("/api/audit?action=run.start&actor=lena");
  });

  it("says when no entry matches", async () => {
    renderAt("/audit", { "/api/audit": { body: [] } });
    expect(await screen.findByText("No audit entry matches.")).toBeInTheDocument();
  });

  it("shows the server's error", async () => {
    renderAt("/audit", { "/api/audit": { status: 500, body: { detail: "audit database locked" } } });
    expect(await screen.findByText("audit database locked")).toBeInTheDocument();
  });

  it("verifies the chain: intact", async () => {
    renderAt("/audit", { "/api/audit": { body: [ENTRY] },
                         "/api/audit/verify": { body: { intact: true, entries: 7, problem: null } } });
    await userEvent.click(await screen.findByRole("button", { name: "Verify chain" }));
    expect(await screen.findByText("Chain intact: 7 entries verified.")).toBeInTheDocument();
  });

  it("verifies the chain: broken", async () => {
    renderAt("/audit", { "/api/audit": { body: [ENTRY] },
                         "/api/audit/verify": { body: { intact: false, entries: 7, problem: "entry 4: hash mismatch" } } });
    await userEvent.click(await screen.findByRole("button", { name: "Verify chain" }));
    expect(await screen.findByText("Chain broken: entry 4: hash mismatch")).toBeInTheDocument();
  });
});
