// Renders the console at a route with a logged-in role and a fetch answered from a table.
import { render } from "@testing-library/react";
import { MemoryRouter } from "react-router-dom";
import { vi } from "vitest";
import { App } from "../App";
import { SessionProvider } from "../auth";
import type { Me } from "../api";

export type Reply = { status?: number; body: unknown };
export type Routes = Record<string, Reply | ((init: RequestInit) => Reply)>;

export const LEAD: Me = { subject: "lena", role: "lead", site: null };
export const ADMIN: Me = { subject: "ada", role: "admin", site: null };
export const SITE_A: Me = { subject: "site-a", role: "site", site: "site-a" };

/** A fetch mock answering "METHOD /api/path?query" (or "/api/path" for GET) from `routes`. */
export function mockFetch(routes: Routes) {
  const fetchMock = vi.fn(async (url: string, init: RequestInit = {}) => {
    const method = init.method ?? "GET";
    const key = method === "GET" && url in routes ? url : `${method} ${url}`;
    const entry = routes[key];
    if (entry === undefined) {
      return new Response(JSON.stringify({ detail: `no mock for ${key}` }), { status: 404 });
    }
    const reply = typeof entry === "function" ? entry(init) : entry;
    return new Response(JSON.stringify(reply.body), {
      status: reply.status ?? 200, headers: { "Content-Type": "application/json" } });
  });
  vi.stubGlobal("fetch", fetchMock);
  return fetchMock;
}

export function renderAt(path: string, routes: Routes, me: Me | null = LEAD) {
  if (me !== null) {
    sessionStorage.setItem("cancer-alpha-console-token", "test-token");
    routes = { "/api/me": { body: me }, ...routes };
  }
  const fetchMock = mockFetch(routes);
  const view = render(
    <MemoryRouter initialEntries={[path]}>
      <SessionProvider><App /></SessionProvider>
    </MemoryRouter>,
  );
  return { ...view, fetchMock };
}

export const SITE = {
  name: "site-a", fingerprint: "SHA256:aa11", status: "enabled", online: true,
  last_seen: "2026-11-28T10:00:00Z", data_summary: { patients: 120, cohort: "BRCA" },
};
export const SITE_B = { ...SITE, name: "site-b", fingerprint: "SHA256:bb22", online: false };
export const RUN = {
  id: "run-1", template: "e2e", status: "finished", started_at: "2026-11-28T10:00:00Z",
  finished_at: "2026-11-28T10:05:00Z", rounds_done: 2, rounds_total: 2, best_f1_macro: 0.61,
};
export const round = (n: number, f1: number) => ({
  round: n, metrics: { f1_macro: f1, accuracy: 0.7, loss: 0.9 },
  sites: [{ name: "site-a", participated: true, epsilon_spent: 1.25 * n, epsilon_budget: 8 },
          { name: "site-b", participated: true, epsilon_spent: 1.5 * n, epsilon_budget: 8 }],
});
export const DETAIL = {
  ...RUN, config: { rounds: 2 }, rounds: [round(1, 0.5), round(2, 0.61)],
  rejections: [{ round: 2, site: "site-b", reason: "update norm above the clip bound" }], errors: [],
};
export const MODEL = {
  id: "cancer-alpha:3", run_id: "run-1", created_at: "2026-11-28T10:06:00Z",
  metrics: { f1_macro: 0.61, accuracy: 0.7 }, promoted: false, promotion_reason: null,
  lineage: { parent: "cancer-alpha:2" }, stage: "candidate",
};
