// The coordinator API's JSON objects and a small client for them (contract: docs/console.md).

export type Role = "lead" | "admin" | "site";

export interface Me { subject: string; role: Role; site: string | null }

export interface Site {
  name: string; fingerprint: string; status: "enabled" | "revoked"; online: boolean;
  last_seen: string | null; data_summary: Record<string, unknown> | null;
  registration_problem?: string | null;
}

export type RunStatus = "running" | "finished" | "stopped" | "failed";

export interface RunSummary {
  id: string; template: string | null; status: RunStatus; started_at: string;
  finished_at: string | null; rounds_done: number; rounds_total: number;
  best_f1_macro: number | null;
}

export interface SiteRound {
  name: string; participated: boolean; epsilon_spent: number | null; epsilon_budget: number | null;
}

export interface Round {
  round: number;
  metrics: { f1_macro: number | null; accuracy: number | null; loss: number | null };
  sites: SiteRound[];
  failed?: boolean;
  seconds?: number | null;
}

export interface Rejection { round: number; site: string; reason: string }

export interface RunDetail extends RunSummary {
  config: Record<string, unknown>; rounds: Round[]; rejections: Rejection[]; errors: string[];
}

export interface Model {
  id: string; run_id: string | null; created_at: string; metrics: Record<string, unknown>;
  promoted: boolean; promotion_reason: string | null; lineage: Record<string, unknown>;
  name?: string; version?: number; stage?: string;
}

export interface Overview {
  sites_total: number; sites_online: number; runs_running: RunSummary[]; latest_model: Model | null;
}

export interface Template { name: string; description: string; config: Record<string, unknown> }

export interface AuditEntry {
  seq: number; time: string; actor: string; action: string; detail: Record<string, unknown>;
  hash: string; role?: string;
}

export interface AuditVerdict { intact: boolean; entries: number; problem: string | null }

/** An API answer other than 2xx, with the server's sentence (`detail`). */
export class ApiError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

const TOKEN_KEY = "cancer-alpha-console-token";

/** The token pasted at login; kept for this browser tab only. */
export const tokenStore = {
  get: (): string | null => sessionStorage.getItem(TOKEN_KEY),
  set: (token: string): void => sessionStorage.setItem(TOKEN_KEY, token),
  clear: (): void => sessionStorage.removeItem(TOKEN_KEY),
};

async function explain(reply: Response): Promise<string> {
  try {
    const body = await reply.json();
    if (typeof body?.detail === "string") return body.detail;
    if (body?.detail !== undefined) return JSON.stringify(body.detail);
  } catch {
    // not JSON: fall through to the status line
  }
  return `${reply.status} ${reply.statusText}`.trim();
}

/** Calls `path` under /api with the stored token; throws ApiError on a non-2xx answer. */
export async function api<T>(path: string, init: { method?: string; body?: unknown } = {},
                             token: string | null = tokenStore.get()): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (init.body !== undefined) headers["Content-Type"] = "application/json";
  let reply: Response;
  try {
    reply = await fetch(`/api${path}`, {
      method: init.method ?? "GET", headers,
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
    });
  } catch (e) {
    throw new ApiError(0, `The coordinator could not be reached (${(e as Error).message}).`);
  }
  if (!reply.ok) throw new ApiError(reply.status, await explain(reply));
  return (await reply.json()) as T;
}

/** The URL of a run's event stream (EventSource cannot send headers, so the token rides along). */
export function eventsUrl(runId: string, token: string): string {
  return `/api/runs/${encodeURIComponent(runId)}/events?token=${encodeURIComponent(token)}`;
}

export const enc = encodeURIComponent;
