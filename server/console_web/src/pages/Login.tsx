// Paste a token; it is checked against /api/me and kept in this tab's sessionStorage.
import { Alert, Box, Button, Paper, TextField, Typography } from "@mui/material";
import { useState, type FormEvent } from "react";
import { useNavigate } from "react-router-dom";
import { useSession } from "../auth";

export function LoginPage() {
  const { login } = useSession();
  const navigate = useNavigate();
  const [token, setToken] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await login(token.trim());
      navigate("/");
    } catch (err) {
      setError((err as Error).message);
    } finally {
      setBusy(false);
    }
  };

  return (
    <Box sx={{ display: "flex", justifyContent: "center", mt: 8 }}>
      <Paper component="form" onSubmit={submit} sx={{ p: 4, width: 520 }} aria-labelledby="login-title">
        <Typography id="login-title" variant="h5" component="h1" gutterBottom>
          Coordinator console
        </Typography>
        <Typography variant="body2" sx={{ mb: 2 }}>
          Paste the access token the coordinator issued to you. It is kept only in this browser tab.
        </Typography>
        <TextField label="Access token" type="password" fullWidth required autoFocus value={token}
                   onChange={(e) => setToken(e.target.value)} autoComplete="off" />
        {error && <Alert severity="error" sx={{ mt: 2 }}>{error}</Alert>}
        <Button type="submit" variant="contained" sx={{ mt: 2 }} disabled={busy || token.trim() === ""}>
          Log in
        </Button>
      </Paper>
    </Box>
  );
}
