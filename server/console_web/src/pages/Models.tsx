// The model registry: metrics, lineage, promotion with a reason.
import { Alert, Button, Link, Table, TableBody, TableCell, TableHead, TableRow,
         Typography } from "@mui/material";
import { useState } from "react";
import { Link as RouterLink } from "react-router-dom";
import { api, enc, type Model } from "../api";
import { useCanAct } from "../auth";
import { ReasonDialog } from "../components/ReasonDialog";
import { StatusChip } from "../components/StatusChip";
import { Empty, Loaded } from "../components/States";
import { summary, when } from "../format";
import { useResource } from "../hooks";

function headline(metrics: Record<string, unknown>): Record<string, unknown> {
  // Scalars only: per-class tables would swamp the row.
  return Object.fromEntries(Object.entries(metrics).filter(([, v]) => typeof v === "number")
    .map(([k, v]) => [k, Number((v as number).toFixed(3))]));
}

export function ModelsPage() {
  const models = useResource<Model[]>("/models");
  const canAct = useCanAct();
  const [target, setTarget] = useState<Model | null>(null);
  const [done, setDone] = useState<string | null>(null);

  const promote = async (reason: string) => {
    if (target === null) return;
    await api<Model>(`/models/${enc(target.id)}/promote`, { method: "POST", body: { reason } });
    setDone(`${target.id} is promoted.`);
    models.reload(); // promotion archives the previously promoted model
  };

  return (
    <>
      <Typography variant="h4" component="h1" gutterBottom>Models</Typography>
      {done && <Alert severity="success" onClose={() => setDone(null)}>{done}</Alert>}
      <Loaded what="models" {...models} onRetry={models.reload}>
        {(list) => list.length === 0 ? <Empty>No model is registered yet; a finished run registers one.</Empty> : (
          <Table size="small" aria-label="models">
            <TableHead><TableRow>
              <TableCell>Model</TableCell><TableCell>Stage</TableCell><TableCell>Run</TableCell>
              <TableCell>Created</TableCell><TableCell>Metrics</TableCell><TableCell>Lineage</TableCell>
              <TableCell>Promotion reason</TableCell>{canAct && <TableCell>Actions</TableCell>}
            </TableRow></TableHead>
            <TableBody>
              {list.map((m) => (
                <TableRow key={m.id}>
                  <TableCell>{m.id}</TableCell>
                  <TableCell><StatusChip status={m.stage ?? (m.promoted ? "production" : "candidate")} /></TableCell>
                  <TableCell>{m.run_id
                    ? <Link component={RouterLink} to={`/runs/${enc(m.run_id)}`}>{m.run_id}</Link> : "—"}</TableCell>
                  <TableCell>{when(m.created_at)}</TableCell>
                  <TableCell>{summary(headline(m.metrics))}</TableCell>
                  <TableCell sx={{ maxWidth: 320, wordBreak: "break-word" }}>{summary(m.lineage)}</TableCell>
                  <TableCell>{m.promotion_reason ?? "—"}</TableCell>
                  {canAct && (
                    <TableCell>
                      {!m.promoted && <Button onClick={() => setTarget(m)}>Promote {m.id}</Button>}
                    </TableCell>
                  )}
                </TableRow>
              ))}
            </TableBody>
          </Table>
        )}
      </Loaded>
      <ReasonDialog open={target !== null} onClose={() => setTarget(null)} onConfirm={promote}
                    title={`Promote ${target?.id ?? ""}?`} confirmLabel="Promote"
                    text="The inference service serves the promoted model." />
    </>
  );
}
