// The hash-chained audit log: filter by action or actor; verify the chain.
import { Alert, Box, Button, Table, TableBody, TableCell, TableHead, TableRow, TextField,
         Typography } from "@mui/material";
import { useState, type FormEvent } from "react";
import { api, type AuditEntry, type AuditVerdict } from "../api";
import { Empty, Loaded } from "../components/States";
import { summary, when } from "../format";
import { useResource } from "../hooks";

function query(action: string, actor: string): string {
  const q = new URLSearchParams();
  if (action) q.set("action", action);
  if (actor) q.set("actor", actor);
  const s = q.toString();
  return s ? `/audit?${s}` : "/audit";
}

export function AuditPage() {
  const [action, setAction] = useState("");
  const [actor, setActor] = useState("");
  const [path, setPath] = useState("/audit");
  const entries = useResource<AuditEntry[]>(path);
  const [verdict, setVerdict] = useState<AuditVerdict | null>(null);
  const [verifyError, setVerifyError] = useState<string | null>(null);
  const [verifying, setVerifying] = useState(false);

  const filter = (e: FormEvent) => { e.preventDefault(); setPath(query(action.trim(), actor.trim())); };
  const verify = async () => {
    setVerifying(true);
    setVerifyError(null);
    try {
      setVerdict(await api<AuditVerdict>("/audit/verify"));
    } catch (e) {
      setVerifyError((e as Error).message);
    } finally {
      setVerifying(false);
    }
  };

  return (
    <>
      <Typography variant="h4" component="h1" gutterBottom>Audit log</Typography>
      <Box sx={{ display: "flex", gap: 2, alignItems: "center", mb: 2 }}>
        <Button variant="contained" onClick={verify} disabled={verifying}>Verify chain</Button>
        <Box aria-live="polite">
          {verdict && (verdict.intact
            ? <Alert severity="success">Chain intact: {verdict.entries} entries verified.</Alert>
            : <Alert severity="error">Chain broken: {verdict.problem ?? "unknown problem"}</Alert>)}
          {verifyError && <Alert severity="error">{verifyError}</Alert>}
        </Box>
      </Box>
      <Box component="form" onSubmit={filter} aria-label="filter the audit log"
           sx={{ display: "flex", gap: 2, mb: 2 }}>
        <TextField size="small" label="Action" value={action} onChange={(e) => setAction(e.target.value)}
                   placeholder="e.g. run.start" />
        <TextField size="small" label="Actor" value={actor} onChange={(e) => setActor(e.target.value)} />
        <Button type="submit" variant="outlined">Filter</Button>
      </Box>
      <Loaded what="audit entries" {...entries} onRetry={entries.reload}>
        {(list) => list.length === 0 ? <Empty>No audit entry matches.</Empty> : (
          <Table size="small" aria-label="audit entries">
            <TableHead><TableRow>
              <TableCell>#</TableCell><TableCell>Time</TableCell><TableCell>Actor</TableCell>
              <TableCell>Action</TableCell><TableCell>Detail</TableCell><TableCell>Hash</TableCell>
            </TableRow></TableHead>
            <TableBody>
              {list.map((e) => (
                <TableRow key={e.seq}>
                  <TableCell>{e.seq}</TableCell><TableCell>{when(e.time)}</TableCell>
                  <TableCell>{e.actor}{e.role ? ` (${e.role})` : ""}</TableCell>
                  <TableCell>{e.action}</TableCell>
                  <TableCell sx={{ maxWidth: 400, wordBreak: "break-word" }}>{summary(e.detail)}</TableCell>
                  <TableCell><code title={e.hash}>{e.hash.slice(0, 12)}</code></TableCell>
                </TableRow>
              ))}
            </TableBody>
          </Table>
        )}
      </Loaded>
    </>
  );
}
