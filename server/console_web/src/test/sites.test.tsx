import { fireEvent, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it } from "vitest";
import { ADMIN, LEAD, SITE, SITE_A, SITE_B, renderAt } from "./render";

describe("sites page", () => {
  it("lists sites with fingerprint, presence and data summary", async () => {
    renderAt("/sites", { "/api/sites": { body: [SITE, SITE_B] } }, LEAD);
    const table = await screen.findByRole("table", { name: "sites" });
    expect(within(table).getByText("SHA256:aa11")).toBeInTheDocument();
    expect(within(table).getAllByText(/patients: 120/)).toHaveLength(2);
    expect(within(table).getByText("offline")).toBeInTheDocument();
    // a lead may not revoke: only admins get the buttons
    expect(screen.queryByRole("button", { name: /revoke/i })).toBeNull();
  });

  it("says when the PKI holds no site", async () => {
    renderAt("/sites", { "/api/sites": { body: [] } });
    expect(await screen.findByText(/No site has a key/)).toBeInTheDocument();
  });

  it("shows the server's error", async () => {
    renderAt("/sites", { "/api/sites": { status: 503, body: { detail: "the PKI directory is missing" } } });
    expect(await screen.findByText("the PKI directory is missing")).toBeInTheDocument();
  });

  it("asks for confirmation and a reason before revoking", async () => {
    const revokedA = { ...SITE, status: "revoked", online: false };
    let revoked = false; // the page re-reads the list every few seconds
    const { fetchMock } = renderAt("/sites", {
      "/api/sites": () => ({ body: [revoked ? revokedA : SITE, SITE_B] }),
      "POST /api/sites/site-a/revoke": () => { revoked = true; return { body: revokedA }; },
    }, ADMIN);
    await userEvent.click(await screen.findByRole("button", { name: "Revoke site-a" }));
    const dialog = screen.getByRole("dialog", { name: "Revoke site-a?" });
    const confirm = within(dialog).getByRole("button", { name: "Revoke" });
    expect(confirm).toBeDisabled();
    expect(fetchMock.mock.calls.some(([, i]) => (i as RequestInit)?.method === "POST")).toBe(false);
    fireEvent.change(within(dialog).getByRole("textbox", { name: /reason/i }), { target: { value: "key leaked" } });
    await userEvent.click(confirm);
    expect(await screen.findByText("site-a is now revoked.")).toBeInTheDocument();
    const post = fetchMock.mock.calls.find(([, i]) => (i as RequestInit)?.method === "POST");
    expect(post?.[0]).toBe("/api/sites/site-a/revoke");
    expect(fetchMock.mock.calls.filter(([, i]) => (i as RequestInit)?.method === "POST")).toHaveLength(1);
    expect(JSON.parse((post?.[1] as RequestInit).body as string)).toEqual({ reason: "key leaked" });
    expect(await screen.findByRole("button", { name: "Enable site-a" })).toBeInTheDocument();
  });

  it("cancelling the dialog revokes nothing", async () => {
    const { fetchMock } = renderAt("/sites", { "/api/sites": { body: [SITE] } }, ADMIN);
    await userEvent.click(await screen.findByRole("button", { name: "Revoke site-a" }));
    await userEvent.click(screen.getByRole("button", { name: "Cancel" }));
    await waitFor(() => expect(screen.queryByRole("dialog")).toBeNull());
    expect(fetchMock.mock.calls.some(([, i]) => (i as RequestInit)?.method === "POST")).toBe(false);
  });

  it("shows a site token no action buttons and refuses another site's page", async () => {
    renderAt("/sites/site-b", { "/api/sites": { body: [SITE] } }, SITE_A);
    expect(await screen.findByText(/Access refused: a site token sees only its own site/)).toBeInTheDocument();
    expect(screen.queryByRole("link", { name: "Audit" })).toBeNull();
    expect(screen.queryByRole("button", { name: /revoke|enable/i })).toBeNull();
  });

  it("shows a site its own page", async () => {
    renderAt("/sites/site-a", { "/api/sites": { body: [SITE] } }, SITE_A);
    expect(await screen.findByText("SHA256:aa11")).toBeInTheDocument();
  });
});
