// Loading, error and empty states every page uses.
import { Alert, Box, Button, CircularProgress, Typography } from "@mui/material";
import type { ReactNode } from "react";

export function Loading({ what }: { what: string }) {
  return (
    <Box role="status" aria-live="polite" sx={{ display: "flex", gap: 2, alignItems: "center", my: 3 }}>
      <CircularProgress size={24} aria-hidden />
      <Typography>Loading {what}…</Typography>
    </Box>
  );
}

export function ErrorState({ message, onRetry }: { message: string; onRetry?: () => void }) {
  return (
    <Alert severity="error" sx={{ my: 2 }}
           action={onRetry && <Button color="inherit" size="small" onClick={onRetry}>Retry</Button>}>
      {message}
    </Alert>
  );
}

export function Empty({ children }: { children: ReactNode }) {
  return <Alert severity="info" sx={{ my: 2 }}>{children}</Alert>;
}

/** Renders `children(data)` once loaded, else the matching state. */
export function Loaded<T>({ what, data, error, loading, onRetry, children }: {
  what: string; data: T | null; error: string | null; loading: boolean;
  onRetry?: () => void; children: (data: T) => ReactNode;
}) {
  if (error !== null) return <ErrorState message={error} onRetry={onRetry} />;
  if (loading && data === null) return <Loading what={what} />;
  if (data === null) return <Loading what={what} />;
  return <>{children(data)}</>;
}
