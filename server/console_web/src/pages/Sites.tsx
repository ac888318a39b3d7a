// Sites: key fingerprint, presence, declared data; admins enable or revoke with a reason.
import { Alert, Button, Link, Table, TableBody, TableCell, TableHead, TableRow,
         Typography } from "@mui/material";
import { useState } from "react";
import { Link as RouterLink } from "react-router-dom";
import { api, enc, type Site } from "../api";
import { useIsAdmin } from "../auth";
import { ReasonDialog } from "../components/ReasonDialog";
import { StatusChip } from "../components/StatusChip";
import { Empty, Loaded } from "../components/States";
import { summary, when } from "../format";
import { useResource } from "../hooks";

type Change = { site: Site; action: "revoke" | "enable" };

export function SitesPage() {
  const sites = useResource<Site[]>("/sites", 5000);
  const isAdmin = useIsAdmin();
  const [change, setChange] = useState<Change | null>(null);
  const [done, setDone] = useState<string | null>(null);

  const apply = async (reason: string) => {
    if (change === null) return;
    const updated = await api<Site>(`/sites/${enc(change.site.name)}/${change.action}`,
                                    { method: "POST", body: { reason } });
    sites.setData((sites.data ?? []).map((s) => (s.name === updated.name ? updated : s)));
    setDone(`${updated.name} is now ${updated.status}.`);
  };

  return (
    <>
      <Typography variant="h4" component="h1" gutterBottom>Sites</Typography>
      {done && <Alert severity="success" onClose={() => setDone(null)}>{done}</Alert>}
      <Loaded what="sites" {...sites} onRetry={sites.reload}>
        {(list) => list.length === 0 ? <Empty>No site has a key in the consortium PKI yet.</Empty> : (
          <Table size="small" aria-label="sites">
            <TableHead>
              <TableRow>
                <TableCell>Site</TableCell><TableCell>Key fingerprint</TableCell>
                <TableCell>Status</TableCell><TableCell>Presence</TableCell>
                <TableCell>Last seen</TableCell><TableCell>Data summary</TableCell>
                {isAdmin && <TableCell>Actions</TableCell>}
              </TableRow>
            </TableHead>
            <TableBody>
              {list.map((s) => (
                <TableRow key={s.name}>
                  <TableCell>
                    <Link component={RouterLink} to={`/sites/${enc(s.name)}`}>{s.name}</Link>
                  </TableCell>
                  <TableCell><code>{s.fingerprint}</code></TableCell>
                  <TableCell><StatusChip status={s.status} /></TableCell>
                  <TableCell><StatusChip status={s.online ? "online" : "offline"} /></TableCell>
                  <TableCell>{when(s.last_seen)}</TableCell>
                  <TableCell>
                    {summary(s.data_summary)}
                    {s.registration_problem && (
                      <Typography variant="body2" color="error">{s.registration_problem}</Typography>
                    )}
                  </TableCell>
                  {isAdmin && (
                    <TableCell>
                      {s.status === "enabled"
                        ? <Button color="error" onClick={() => setChange({ site: s, action: "revoke" })}>
                            Revoke {s.name}</Button>
                        : <Button onClick={() => setChange({ site: s, action: "enable" })}>
                            Enable {s.name}</Button>}
                    </TableCell>
                  )}
                </TableRow>
              ))}
            </TableBody>
          </Table>
        )}
      </Loaded>
      <ReasonDialog open={change !== null} onClose={() => setChange(null)} onConfirm={apply}
                    title={change ? `${change.action === "revoke" ? "Revoke" : "Enable"} ${change.site.name}?` : ""}
                    text={change?.action === "revoke"
                      ? "The site's key is refused from its next heartbeat on; it takes no part in runs."
                      : "The site's key is accepted again."}
                    confirmLabel={change?.action === "revoke" ? "Revoke" : "Enable"} />
    </>
  );
}
