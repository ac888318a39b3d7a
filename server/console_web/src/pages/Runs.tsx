// Runs: a filterable list, starting a run from a template, and two runs' curves compared.
import { Alert, Box, Button, Checkbox, FormControl, InputLabel, Link, MenuItem, Select, Table,
         TableBody, TableCell, TableHead, TableRow, TextField, Typography } from "@mui/material";
import { useEffect, useState } from "react";
import { Link as RouterLink, useNavigate } from "react-router-dom";
import { api, enc, type RunDetail, type RunSummary, type Template } from "../api";
import { useCanAct } from "../auth";
import { RoundChart } from "../components/RoundChart";
import { StatusChip } from "../components/StatusChip";
import { Empty, ErrorState, Loaded, Loading } from "../components/States";
import { num, when } from "../format";
import { useResource } from "../hooks";

const STATUSES = ["running", "finished", "stopped", "failed"] as const;

export function RunsPage() {
  const [status, setStatus] = useState<string>("");
  const runs = useResource<RunSummary[]>(status ? `/runs?status=${status}` : "/runs");
  const [picked, setPicked] = useState<string[]>([]);
  const canAct = useCanAct();

  const toggle = (id: string) =>
    setPicked((p) => (p.includes(id) ? p.filter((x) => x !== id) : [...p, id].slice(-2)));

  return (
    <>
      <Typography variant="h4" component="h1" gutterBottom>Runs</Typography>
      {canAct && <StartRun />}
      <FormControl size="small" sx={{ minWidth: 200, my: 2 }}>
        <InputLabel id="status-filter-label">Status</InputLabel>
        <Select labelId="status-filter-label" label="Status" value={status}
                onChange={(e) => setStatus(e.target.value)}>
          <MenuItem value="">all</MenuItem>
          {STATUSES.map((s) => <MenuItem key={s} value={s}>{s}</MenuItem>)}
        </Select>
      </FormControl>
      <Loaded what="runs" {...runs} onRetry={runs.reload}>
        {(list) => list.length === 0
          ? <Empty>{status ? `No ${status} run.` : "No run yet."}</Empty>
          : (
            <Table size="small" aria-label="runs">
              <TableHead>
                <TableRow>
                  <TableCell>Compare</TableCell><TableCell>Run</TableCell><TableCell>Template</TableCell>
                  <TableCell>Status</TableCell><TableCell>Rounds</TableCell>
                  <TableCell>Best macro-F1</TableCell><TableCell>Started</TableCell>
                  <TableCell>Finished</TableCell>
                </TableRow>
              </TableHead>
              <TableBody>
                {list.map((r) => (
                  <TableRow key={r.id}>
                    <TableCell padding="checkbox">
                      <Checkbox checked={picked.includes(r.id)} onChange={() => toggle(r.id)}
                                inputProps={{ "aria-label": `compare ${r.id}` }} />
                    </TableCell>
                    <TableCell><Link component={RouterLink} to={`/runs/${enc(r.id)}`}>{r.id}</Link></TableCell>
                    <TableCell>{r.template ?? "—"}</TableCell>
                    <TableCell><StatusChip status={r.status} /></TableCell>
                    <TableCell>{r.rounds_done} / {r.rounds_total}</TableCell>
                    <TableCell>{num(r.best_f1_macro)}</TableCell>
                    <TableCell>{when(r.started_at)}</TableCell>
                    <TableCell>{when(r.finished_at)}</TableCell>
                  </TableRow>
                ))}
              </TableBody>
            </Table>
          )}
      </Loaded>
      {picked.length === 2 ? <Compare ids={picked} />
        : <Typography variant="body2" sx={{ mt: 2 }}>Tick two runs to compare their curves.</Typography>}
    </>
  );
}

function StartRun() {
  const templates = useResource<Template[]>("/templates");
  const [template, setTemplate] = useState("");
  const [name, setName] = useState("");
  const [error, setError] = useState<string | null>(null);
  const navigate = useNavigate();

  const start = async () => {
    setError(null);
    try {
      const run = await api<RunSummary>("/runs", {
        method: "POST", body: { template, name: name.trim() || null } });
      navigate(`/runs/${enc(run.id)}`);
    } catch (e) {
      setError((e as Error).message);
    }
  };

  if (templates.error) return <ErrorState message={templates.error} onRetry={templates.reload} />;
  if (templates.data === null) return <Loading what="run templates" />;
  if (templates.data.length === 0) return <Empty>No run template is saved on the coordinator.</Empty>;
  return (
    <Box component="section" aria-label="start a run" sx={{ display: "flex", gap: 2, alignItems: "center", flexWrap: "wrap" }}>
      <FormControl size="small" sx={{ minWidth: 200 }}>
        <InputLabel id="template-label">Template</InputLabel>
        <Select labelId="template-label" label="Template" value={template}
                onChange={(e) => setTemplate(e.target.value)}>
          {templates.data.map((t) => <MenuItem key={t.name} value={t.name}>{t.name}: {t.description}</MenuItem>)}
        </Select>
      </FormControl>
      <TextField size="small" label="Run name (optional)" value={name} onChange={(e) => setName(e.target.value)} />
      <Button variant="contained" onClick={start} disabled={template === ""}>Start run</Button>
      {error && <Alert severity="error">{error}</Alert>}
    </Box>
  );
}

function Compare({ ids }: { ids: string[] }) {
  const [details, setDetails] = useState<RunDetail[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    let current = true;
    setDetails(null);
    setError(null);
    Promise.all(ids.map((id) => api<RunDetail>(`/runs/${enc(id)}`)))
      .then((d) => { if (current) setDetails(d); })
      .catch((e: Error) => { if (current) setError(e.message); });
    return () => { current = false; };
  }, [ids]);
  if (error) return <ErrorState message={error} />;
  if (details === null) return <Loading what="the runs to compare" />;
  return (
    <RoundChart title={`macro-F1 per round: ${ids.join(" vs ")}`} metrics={["f1_macro"]}
                series={details.map((d) => ({ label: d.id, rounds: d.rounds }))} />
  );
}
