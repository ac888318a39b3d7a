import { fireEvent, render, screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { MemoryRouter } from "react-router-dom";
import { describe, expect, it } from "vitest";
import { App } from "../App";
import { SessionProvider } from "../auth";
import { LEAD, mockFetch } from "./render";

function renderLogin() {
  return render(
    <MemoryRouter initialEntries={["/runs"]}>
      <SessionProvider><App /></SessionProvider>
    </MemoryRouter>,
  );
}

describe("login", () => {
  it("sends an unknown visitor to the login page", () => {
    mockFetch({});
    renderLogin();
    expect(screen.getByRole("heading", { name: "Coordinator console" })).toBeInTheDocument();
  });

  it("checks the token with /api/me and keeps it in sessionStorage", async () => {
    const fetchMock = mockFetch({
      "/api/me": { body: LEAD },
      "/api/overview": { body: { sites_total: 2, sites_online: 2, runs_running: [], latest_model: null } },
    });
    renderLogin();
    fireEvent.change(screen.getByLabelText(/access token/i), { target: { value: "tok-123" } });
    await userEvent.click(screen.getByRole("button", { name: "Log in" }));
    expect(await screen.findByRole("heading", { name: "Overview" })).toBeInTheDocument();
    expect(sessionStorage.getItem("cancer-alpha-console-token")).toBe("tok-123");
    const [, init] = fetchMock.mock.calls[0];
    expect((init as RequestInit).headers).toMatchObject({ Authorization: "Bearer tok-123" });
    expect(screen.getByTestId("identity")).toHaveTextContent("lena (lead)");
  });

  it("refuses a bad token and stores nothing", async () => {
    mockFetch({ "/api/me": { status: 401, body: { detail: "the token's signature is invalid" } } });
    renderLogin();
    fireEvent.change(screen.getByLabelText(/access token/i), { target: { value: "forged" } });
    fireEvent.click(screen.getByRole("button", { name: "Log in" }));
    expect(await screen.findByText("the token's signature is invalid")).toBeInTheDocument();
    await waitFor(() => expect(sessionStorage.getItem("cancer-alpha-console-token")).toBeNull());
  });
});
