// Per-round metric curves of one or more runs on one chart.
import { Box, Typography } from "@mui/material";
import { CartesianGrid, Legend, Line, LineChart, ResponsiveContainer, Tooltip, XAxis,
         YAxis } from "recharts";
import type { Round } from "../api";

export interface Series { label: string; rounds: Round[] }

type Metric = "f1_macro" | "accuracy" | "loss";

const COLOURS = ["#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00"];

/** One row per round, one column per (series, metric). */
export function chartRows(series: Series[], metrics: Metric[]): Record<string, number | null>[] {
  const rounds = new Set<number>();
  series.forEach((s) => s.rounds.forEach((r) => rounds.add(r.round)));
  return [...rounds].sort((a, b) => a - b).map((round) => {
    const row: Record<string, number | null> = { round };
    for (const s of series) {
      const r = s.rounds.find((x) => x.round === round);
      for (const m of metrics) row[`${s.label} ${m}`] = r?.metrics[m] ?? null;
    }
    return row;
  });
}

export function RoundChart({ series, metrics, title }: {
  series: Series[]; metrics: Metric[]; title: string;
}) {
  const rows = chartRows(series, metrics);
  const keys = series.flatMap((s) => metrics.map((m) => `${s.label} ${m}`));
  return (
    <Box component="figure" sx={{ m: 0, my: 2 }} aria-label={title}>
      <Typography component="figcaption" variant="subtitle1">{title}</Typography>
      <Box sx={{ width: "100%", height: 300 }}>
        <ResponsiveContainer width="100%" height="100%" minWidth={300} minHeight={200}>
          <LineChart data={rows} margin={{ top: 10, right: 20, bottom: 10, left: 0 }}>
            <CartesianGrid strokeDasharray="3 3" />
            <XAxis dataKey="round" label={{ value: "round", position: "insideBottomRight", offset: -5 }} />
            <YAxis />
            <Tooltip />
            <Legend />
            {keys.map((key, i) => (
              <Line key={key} type="monotone" dataKey={key} connectNulls isAnimationActive={false}
                    stroke={COLOURS[i % COLOURS.length]} dot />
            ))}
          </LineChart>
        </ResponsiveContainer>
      </Box>
      <table className="visually-hidden" aria-label={`${title} (data)`}>
        <thead><tr><th>round</th>{keys.map((k) => <th key={k}>{k}</th>)}</tr></thead>
        <tbody>
          {rows.map((r) => (
            <tr key={r.round}><td>{r.round}</td>{keys.map((k) => <td key={k}>{r[k] ?? "—"}</td>)}</tr>
          ))}
        </tbody>
      </table>
    </Box>
  );
}
