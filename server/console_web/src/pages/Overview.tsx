// Sites online, running runs and the latest model at a glance.
import { Card, CardContent, Grid, Link, List, ListItem, Typography } from "@mui/material";
import { Link as RouterLink } from "react-router-dom";
import { enc, type Overview } from "../api";
import { Empty, Loaded } from "../components/States";
import { num, when } from "../format";
import { useResource } from "../hooks";

export function OverviewPage() {
  const overview = useResource<Overview>("/overview", 5000);
  return (
    <>
      <Typography variant="h4" component="h1" gutterBottom>Overview</Typography>
      <Loaded what="the overview" {...overview} onRetry={overview.reload}>
        {(o) => (
          <Grid container spacing={2}>
            <Grid size={{ xs: 12, md: 4 }}>
              <Card><CardContent>
                <Typography variant="h6" component="h2">Sites online</Typography>
                <Typography variant="h3" aria-label="sites online">
                  {o.sites_online} / {o.sites_total}
                </Typography>
                <Link component={RouterLink} to="/sites">All sites</Link>
              </CardContent></Card>
            </Grid>
            <Grid size={{ xs: 12, md: 4 }}>
              <Card><CardContent>
                <Typography variant="h6" component="h2">Running runs</Typography>
                {o.runs_running.length === 0 ? <Empty>No run is running.</Empty> : (
                  <List dense>
                    {o.runs_running.map((r) => (
                      <ListItem key={r.id}>
                        <Link component={RouterLink} to={`/runs/${enc(r.id)}`}>
                          {r.id}: round {r.rounds_done} of {r.rounds_total}
                        </Link>
                      </ListItem>
                    ))}
                  </List>
                )}
              </CardContent></Card>
            </Grid>
            <Grid size={{ xs: 12, md: 4 }}>
              <Card><CardContent>
                <Typography variant="h6" component="h2">Latest model</Typography>
                {o.latest_model === null ? <Empty>No model is registered yet.</Empty> : (
                  <>
                    <Typography>{o.latest_model.id}{o.latest_model.promoted ? " (promoted)" : ""}</Typography>
                    <Typography variant="body2">created {when(o.latest_model.created_at)}</Typography>
                    <Typography variant="body2">
                      macro-F1 {num(o.latest_model.metrics.f1_macro ?? o.latest_model.metrics.test_f1_macro)}
                    </Typography>
                    <Link component={RouterLink} to="/models">Models</Link>
                  </>
                )}
              </CardContent></Card>
            </Grid>
          </Grid>
        )}
      </Loaded>
    </>
  );
}
