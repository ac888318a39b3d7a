// One run, live: rounds arrive over server-sent events; per-site privacy spend; rejections.
import { Alert, Box, Button, List, ListItem, Table, TableBody, TableCell, TableHead, TableRow,
         Typography } from "@mui/material";
import { useEffect, useState } from "react";
import { useParams } from "react-router-dom";
import { api, enc, eventsUrl, type Round, type RunDetail, type RunSummary } from "../api";
import { useCanAct, useSession } from "../auth";
import { RoundChart } from "../components/RoundChart";
import { StatusChip } from "../components/StatusChip";
import { Empty, Loaded } from "../components/States";
import { num, when } from "../format";
import { useResource } from "../hooks";

/** `detail` with a summary's fields (a summary never replaces the rounds, rejections or errors). */
function withSummary(detail: RunDetail, summary: RunSummary): RunDetail {
  const { rounds, rejections, errors, config } = detail;
  return { ...detail, ...summary, rounds, rejections, errors, config };
}

/** `rounds` with `round` added or replaced, in round order. */
export function mergeRound(rounds: Round[], round: Round): Round[] {
  return [...rounds.filter((r) => r.round !== round.round), round].sort((a, b) => a.round - b.round);
}

export function RunLivePage() {
  const { id = "" } = useParams();
  const run = useResource<RunDetail>(`/runs/${enc(id)}`);
  const { token } = useSession();
  const canAct = useCanAct();
  const [live, setLive] = useState<"connecting" | "open" | "closed" | "interrupted">("closed");
  const [actionError, setActionError] = useState<string | null>(null);
  const running = run.data?.status === "running";
  const { reload, setData } = run;

  useEffect(() => {
    if (!running || token === null || typeof EventSource === "undefined") return;
    const source = new EventSource(eventsUrl(id, token));
    setLive("connecting");
    source.onopen = () => setLive("open");
    source.onerror = () => setLive(source.readyState === EventSource.CLOSED ? "closed" : "interrupted");
    source.addEventListener("round", (e) => {
      const round = JSON.parse((e as MessageEvent).data) as Round;
      setData((prev) => ({ ...prev, rounds: mergeRound(prev.rounds, round) }));
    });
    source.addEventListener("status", (e) => {
      const summary = JSON.parse((e as MessageEvent).data) as RunSummary;
      setData((prev) => withSummary(prev, summary));
      if (summary.status !== "running") {
        source.close();
        setLive("closed");
        reload(); // the final rejections and errors
      }
    });
    return () => source.close();
  }, [id, running, token, setData, reload]);

  const act = async (action: "stop" | "resume") => {
    setActionError(null);
    try {
      const summary = await api<RunSummary>(`/runs/${enc(id)}/${action}`, { method: "POST" });
      setData((prev) => withSummary(prev, summary));
    } catch (e) {
      setActionError((e as Error).message);
    }
  };

  return (
    <>
      <Typography variant="h4" component="h1" gutterBottom>Run {id}</Typography>
      <Loaded what={`run ${id}`} {...run} onRetry={run.reload}>
        {(r) => {
          const latest = r.rounds[r.rounds.length - 1];
          return (
            <>
              <Box sx={{ display: "flex", gap: 2, alignItems: "center", flexWrap: "wrap" }}>
                <StatusChip status={r.status} />
                <Typography aria-live="polite" data-testid="progress">
                  Round {r.rounds_done} of {r.rounds_total}
                </Typography>
                <Typography variant="body2">template {r.template ?? "—"}, started {when(r.started_at)},
                  finished {when(r.finished_at)}, best macro-F1 {num(r.best_f1_macro)}</Typography>
                {running && <Typography variant="body2">live updates: {live}</Typography>}
                {canAct && r.status === "running" &&
                  <Button variant="outlined" color="warning" onClick={() => act("stop")}>Stop run</Button>}
                {canAct && (r.status === "stopped" || r.status === "failed") &&
                  <Button variant="outlined" onClick={() => act("resume")}>Resume run</Button>}
              </Box>
              {actionError && <Alert severity="error" sx={{ mt: 1 }}>{actionError}</Alert>}
              {r.rounds.length === 0 ? <Empty>No round has finished yet.</Empty> : (
                <RoundChart title="Metrics per round" metrics={["f1_macro", "accuracy"]}
                            series={[{ label: r.id, rounds: r.rounds }]} />
              )}
              <Typography variant="h6" component="h2">Rounds</Typography>
              {r.rounds.length === 0 ? <Empty>Rounds appear here as they finish.</Empty> : (
                <Table size="small" aria-label="rounds">
                  <TableHead><TableRow>
                    <TableCell>Round</TableCell><TableCell>macro-F1</TableCell>
                    <TableCell>Accuracy</TableCell><TableCell>Loss</TableCell><TableCell>Sites</TableCell>
                  </TableRow></TableHead>
                  <TableBody>
                    {r.rounds.map((x) => (
                      <TableRow key={x.round}>
                        <TableCell>{x.round}{x.failed ? " (failed)" : ""}</TableCell>
                        <TableCell>{num(x.metrics.f1_macro)}</TableCell>
                        <TableCell>{num(x.metrics.accuracy)}</TableCell>
                        <TableCell>{num(x.metrics.loss)}</TableCell>
                        <TableCell>{x.sites.filter((s) => s.participated).length} / {x.sites.length}</TableCell>
                      </TableRow>
                    ))}
                  </TableBody>
                </Table>
              )}
              <Typography variant="h6" component="h2" sx={{ mt: 2 }}>Sites (privacy budget)</Typography>
              {!latest || latest.sites.length === 0 ? <Empty>No site has reported yet.</Empty> : (
                <Table size="small" aria-label="sites in this run">
                  <TableHead><TableRow>
                    <TableCell>Site</TableCell><TableCell>Took part in latest round</TableCell>
                    <TableCell>Epsilon spent</TableCell><TableCell>Epsilon budget</TableCell>
                  </TableRow></TableHead>
                  <TableBody>
                    {latest.sites.map((s) => (
                      <TableRow key={s.name}>
                        <TableCell>{s.name}</TableCell>
                        <TableCell>{s.participated ? "yes" : "no"}</TableCell>
                        <TableCell>{num(s.epsilon_spent, 2)}</TableCell>
                        <TableCell>{s.epsilon_budget === null ? "no DP" : num(s.epsilon_budget, 2)}</TableCell>
                      </TableRow>
                    ))}
                  </TableBody>
                </Table>
              )}
              <Typography variant="h6" component="h2" sx={{ mt: 2 }}>Rejected updates</Typography>
              {r.rejections.length === 0 ? <Empty>No update was rejected.</Empty> : (
                <Table size="small" aria-label="rejected updates">
                  <TableHead><TableRow>
                    <TableCell>Round</TableCell><TableCell>Site</TableCell><TableCell>Reason</TableCell>
                  </TableRow></TableHead>
                  <TableBody>
                    {r.rejections.map((x, i) => (
                      <TableRow key={i}>
                        <TableCell>{x.round}</TableCell><TableCell>{x.site}</TableCell><TableCell>{x.reason}</TableCell>
                      </TableRow>
                    ))}
                  </TableBody>
                </Table>
              )}
              {r.errors.length > 0 && (
                <>
                  <Typography variant="h6" component="h2" sx={{ mt: 2 }}>Errors</Typography>
                  <List dense>{r.errors.map((e, i) => <ListItem key={i}><Alert severity="error">{e}</Alert></ListItem>)}</List>
                </>
              )}
            </>
          );
        }}
      </Loaded>
    </>
  );
}
