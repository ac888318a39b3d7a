"""``python -m server.serving``: the service's commands on their own (the project CLI,
``cancer-alpha``, registers the same commands)."""

from __future__ import annotations

import typer

from server.serving.cli import audit_app, auth_app, registry_app, serve

app = typer.Typer(name="cancer-alpha-serving", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_show_locals=False,
                  help="Cancer Alpha inference service: registry, tokens, audit, serve.")
app.add_typer(registry_app, name="registry")
app.add_typer(auth_app, name="auth")
app.add_typer(audit_app, name="audit")
app.command("serve")(serve)

if __name__ == "__main__":
    app()
