import { Chip } from "@mui/material";

const COLOUR: Record<string, "success" | "info" | "warning" | "error" | "default"> = {
  running: "info", finished: "success", stopped: "warning", failed: "error",
  enabled: "success", revoked: "error", online: "success", offline: "default",
};

export function StatusChip({ status }: { status: string }) {
  return <Chip size="small" label={status} color={COLOUR[status] ?? "default"} />;
}
