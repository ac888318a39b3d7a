// Layout, navigation and routes; every page but login needs a token.
import { AppBar, Box, Button, Container, Toolbar, Typography } from "@mui/material";
import { Navigate, NavLink, Route, Routes } from "react-router-dom";
import { useSession } from "./auth";
import { Loading } from "./components/States";
import { AuditPage } from "./pages/Audit";
import { LoginPage } from "./pages/Login";
import { ModelsPage } from "./pages/Models";
import { OverviewPage } from "./pages/Overview";
import { RunLivePage } from "./pages/RunLive";
import { RunsPage } from "./pages/Runs";
import { SiteDetailPage } from "./pages/SiteDetail";
import { SitesPage } from "./pages/Sites";

const PAGES = [
  { to: "/", label: "Overview", operatorsOnly: false },
  { to: "/sites", label: "Sites", operatorsOnly: false },
  { to: "/runs", label: "Runs", operatorsOnly: false },
  { to: "/models", label: "Models", operatorsOnly: true },
  { to: "/audit", label: "Audit", operatorsOnly: true },
];

export function App() {
  const { token, me, checking, logout } = useSession();
  if (token === null) {
    return (
      <Routes>
        <Route path="/login" element={<LoginPage />} />
        <Route path="*" element={<Navigate to="/login" replace />} />
      </Routes>
    );
  }
  if (me === null) return <Container><Loading what={checking ? "your session" : "the console"} /></Container>;
  const operator = me.role !== "site";
  return (
    <>
      <a className="skip-link" href="#main">Skip to content</a>
      <AppBar position="static">
        <Toolbar component="nav" aria-label="console" sx={{ gap: 1, flexWrap: "wrap" }}>
          <Typography variant="h6" component="span" sx={{ mr: 2 }}>Cancer Alpha</Typography>
          {PAGES.filter((p) => operator || !p.operatorsOnly).map((p) => (
            <Button key={p.to} color="inherit" component={NavLink} to={p.to} end={p.to === "/"}>
              {p.label}
            </Button>
          ))}
          <Box sx={{ flexGrow: 1 }} />
          <Typography variant="body2" sx={{ mr: 1 }} data-testid="identity">
            {me.subject} ({me.role}{me.site ? `, ${me.site}` : ""})
          </Typography>
          <Button color="inherit" onClick={logout}>Log out</Button>
        </Toolbar>
      </AppBar>
      <Container component="main" id="main" tabIndex={-1} sx={{ py: 3 }} maxWidth="xl">
        <Routes>
          <Route path="/" element={<OverviewPage />} />
          <Route path="/login" element={<Navigate to="/" replace />} />
          <Route path="/sites" element={<SitesPage />} />
          <Route path="/sites/:name" element={<SiteDetailPage />} />
          <Route path="/runs" element={<RunsPage />} />
          <Route path="/runs/:id" element={<RunLivePage />} />
          <Route path="/models" element={operator ? <ModelsPage /> : <Navigate to="/" replace />} />
          <Route path="/audit" element={operator ? <AuditPage /> : <Navigate to="/" replace />} />
          <Route path="*" element={<Typography>No such page.</Typography>} />
        </Routes>
      </Container>
    </>
  );
}
