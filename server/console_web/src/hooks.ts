// Loading an API resource with its loading and error states.
import { useCallback, useEffect, useState } from "react";
import { api } from "./api";

export interface Resource<T> {
  data: T | null;
  error: string | null;
  loading: boolean;
  reload: () => void;
  /** Replace the data, or update it (ignored while nothing is loaded). */
  setData: (update: T | ((prev: T) => T)) => void;
}

/** `path` under /api, read again every `refreshMs` when given (presence changes on its own). */
export function useResource<T>(path: string | null, refreshMs?: number): Resource<T> {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [loading, setLoading] = useState<boolean>(path !== null);
  const [generation, setGeneration] = useState(0);

  useEffect(() => {
    if (path === null) return;
    let current = true;
    setLoading(true);
    setError(null);
    api<T>(path)
      .then((d) => { if (current) setData(d); })
      .catch((e: Error) => { if (current) setError(e.message); })
      .finally(() => { if (current) setLoading(false); });
    return () => { current = false; };
  }, [path, generation]);

  const reload = useCallback(() => setGeneration((g) => g + 1), []);
  useEffect(() => {
    if (path === null || !refreshMs) return;
    const timer = setInterval(reload, refreshMs);
    return () => clearInterval(timer);
  }, [path, refreshMs, reload]);
  const update = useCallback((next: T | ((prev: T) => T)) => {
    setData((prev) => (typeof next === "function"
      ? (prev === null ? prev : (next as (p: T) => T)(prev))
      : next));
  }, []);
  return { data, error, loading, reload, setData: update };
}
