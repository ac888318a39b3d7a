// Who is logged in: the token (sessionStorage) and the identity the API reports for it.
import { createContext, useCallback, useContext, useEffect, useState, type ReactNode } from "react";
import { api, ApiError, tokenStore, type Me } from "./api";

interface Session {
  token: string | null;
  me: Me | null;
  checking: boolean;
  login: (token: string) => Promise<void>;
  logout: () => void;
}

const SessionContext = createContext<Session | null>(null);

export function SessionProvider({ children }: { children: ReactNode }) {
  const [token, setToken] = useState<string | null>(tokenStore.get());
  const [me, setMe] = useState<Me | null>(null);
  const [checking, setChecking] = useState<boolean>(token !== null);

  const logout = useCallback(() => {
    tokenStore.clear();
    setToken(null);
    setMe(null);
  }, []);

  const login = useCallback(async (candidate: string) => {
    const who = await api<Me>("/me", {}, candidate);
    tokenStore.set(candidate);
    setToken(candidate);
    setMe(who);
  }, []);

  useEffect(() => {
    // A token kept from earlier in this tab: confirm it still works.
    if (token === null || me !== null) return;
    api<Me>("/me", {}, token)
      .then(setMe)
      .catch((e) => { if (e instanceof ApiError && e.status === 401) logout(); })
      .finally(() => setChecking(false));
  }, [token, me, logout]);

  return (
    <SessionContext.Provider value={{ token, me, checking, login, logout }}>
      {children}
    </SessionContext.Provider>
  );
}

export function useSession(): Session {
  const session = useContext(SessionContext);
  if (session === null) throw new Error("useSession outside SessionProvider");
  return session;
}

/** Leads and admins act; a site token only looks. */
export function useCanAct(): boolean {
  const { me } = useSession();
  return me?.role === "lead" || me?.role === "admin";
}

export function useIsAdmin(): boolean {
  return useSession().me?.role === "admin";
}
