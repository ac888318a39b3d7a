import { screen } from "@testing-library/react";
import { describe, expect, it } from "vitest";
import { MODEL, RUN, renderAt } from "./render";

describe("overview page", () => {
  it("shows sites online, running runs and the latest model", async () => {
    renderAt("/", { "/api/overview": { body: {
      sites_total: 2, sites_online: 1,
      runs_running: [{ ...RUN, status: "running", rounds_done: 1 }], latest_model: MODEL } } });
    expect(await screen.findByLabelText("sites online")).toHaveTextContent("1 / 2");
    expect(screen.getByRole("link", { name: "run-1: round 1 of 2" })).toBeInTheDocument();
    expect(screen.getByText("cancer-alpha:3")).toBeInTheDocument();
  });

  it("says when nothing runs and no model exists", async () => {
    renderAt("/", { "/api/overview": { body: {
      sites_total: 0, sites_online: 0, runs_running: [], latest_model: null } } });
    expect(await screen.findByText("No run is running.")).toBeInTheDocument();
    expect(screen.getByText("No model is registered yet.")).toBeInTheDocument();
  });

  it("shows the server's error", async () => {
    renderAt("/", { "/api/overview": { status: 500, body: { detail: "the store is unreadable" } } });
    expect(await screen.findByText("the store is unreadable")).toBeInTheDocument();
    expect(screen.getByRole("button", { name: "Retry" })).toBeInTheDocument();
  });
});
