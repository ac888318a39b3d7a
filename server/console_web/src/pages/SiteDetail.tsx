// One site's page; a site token may open only its own.
import { Alert, Link, Table, TableBody, TableCell, TableRow, Typography } from "@mui/material";
import { Link as RouterLink, useParams } from "react-router-dom";
import type { Site } from "../api";
import { useSession } from "../auth";
import { StatusChip } from "../components/StatusChip";
import { Loaded } from "../components/States";
import { when } from "../format";
import { useResource } from "../hooks";

export function SiteDetailPage() {
  const { name = "" } = useParams();
  const { me } = useSession();
  const refused = me?.role === "site" && me.site !== name;
  const sites = useResource<Site[]>(refused ? null : "/sites");

  return (
    <>
      <Typography variant="h4" component="h1" gutterBottom>Site {name}</Typography>
      {refused ? (
        <Alert severity="error">
          Access refused: a site token sees only its own site ({me?.site}), not {name}.
        </Alert>
      ) : (
        <Loaded what={`site ${name}`} {...sites} onRetry={sites.reload}>
          {(list) => {
            const site = list.find((s) => s.name === name);
            if (!site) return <Alert severity="warning">No site named {name} is visible to you.</Alert>;
            return (
              <Table size="small" aria-label={`site ${name}`}>
                <TableBody>
                  <TableRow><TableCell component="th">Key fingerprint</TableCell>
                    <TableCell><code>{site.fingerprint}</code></TableCell></TableRow>
                  <TableRow><TableCell component="th">Status</TableCell>
                    <TableCell><StatusChip status={site.status} /></TableCell></TableRow>
                  <TableRow><TableCell component="th">Presence</TableCell>
                    <TableCell><StatusChip status={site.online ? "online" : "offline"} /></TableCell></TableRow>
                  <TableRow><TableCell component="th">Last seen</TableCell>
                    <TableCell>{when(site.last_seen)}</TableCell></TableRow>
                  <TableRow><TableCell component="th">Declared data</TableCell>
                    <TableCell><pre>{JSON.stringify(site.data_summary, null, 2)}</pre></TableCell></TableRow>
                </TableBody>
              </Table>
            );
          }}
        </Loaded>
      )}
      <Link component={RouterLink} to="/sites">All sites</Link>
    </>
  );
}
