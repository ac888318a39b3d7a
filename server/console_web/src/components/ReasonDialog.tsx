// A confirmation that needs a reason (recorded in the audit log with the action).
import { Alert, Button, Dialog, DialogActions, DialogContent, DialogContentText, DialogTitle,
         TextField } from "@mui/material";
import { useState } from "react";

export function ReasonDialog({ open, title, text, confirmLabel, onConfirm, onClose }: {
  open: boolean; title: string; text: string; confirmLabel: string;
  onConfirm: (reason: string) => Promise<void>; onClose: () => void;
}) {
  const [reason, setReason] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const close = () => { setReason(""); setError(null); onClose(); };
  const confirm = async () => {
    setBusy(true);
    setError(null);
    try {
      await onConfirm(reason.trim());
      close();
    } catch (e) {
      setError((e as Error).message);
    } finally {
      setBusy(false);
    }
  };

  return (
    <Dialog open={open} onClose={close} aria-labelledby="reason-dialog-title">
      <DialogTitle id="reason-dialog-title">{title}</DialogTitle>
      <DialogContent>
        <DialogContentText>{text}</DialogContentText>
        <TextField autoFocus fullWidth margin="dense" label="Reason" value={reason} required
                   onChange={(e) => setReason(e.target.value)}
                   helperText="Recorded in the audit log." />
        {error && <Alert severity="error" sx={{ mt: 1 }}>{error}</Alert>}
      </DialogContent>
      <DialogActions>
        <Button onClick={close}>Cancel</Button>
        <Button variant="contained" color="warning" onClick={confirm}
                disabled={busy || reason.trim() === ""}>{confirmLabel}</Button>
      </DialogActions>
    </Dialog>
  );
}
