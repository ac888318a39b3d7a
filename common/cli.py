"""``cancer-alpha``: one command line composed of the commands each installed package owns.

Packages declare their commands as entry points of the ``cancer_alpha.commands`` group
(``pyproject.toml``): ``NAME = "package.module:object"`` mounts a Typer app as the group
NAME, or a function as the command NAME; ``GROUP.NAME`` adds the function as command NAME
of a group several packages share (``audit``). A package that is not installed is left
out, so a site image without ``simulations/`` still runs ``cancer-alpha site ...``.

This module imports no package outside ``common`` (a leaf); packages import
torch and Flower inside their commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import click
import typer

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "cancer_alpha.commands"
PROG = "cancer-alpha"
ROOT_HELP = ("Federated multi-omics cancer classification: simulate a consortium of "
             "hospitals, train centrally or with classical baselines on the same split, "
             "evaluate and audit a model, check a site's data, and serve the global model.")


def build_app(commands: Iterable[EntryPoint] | None = None) -> typer.Typer:
    """The root app with every loadable contributed command (default: the installed ones)."""
    root = typer.Typer(
        name=PROG, help=ROOT_HELP, no_args_is_help=True, add_completion=False,
        cls=_PlainTextHelpGroup,
        # Never print local variables in tracebacks: they may hold patient data.
        pretty_exceptions_show_locals=False,
    )
    shared: dict[str, list[tuple[str, Any]]] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP) if commands is None else commands:
        target = _load(entry)
        if target is None:
            continue
        group, _, name = entry.name.rpartition(".")
        if group:
            shared.setdefault(group, []).append((name, target))
        elif isinstance(target, typer.Typer):
            root.add_typer(target, name=name)
        else:
            root.command(name)(target)
    for group, members in shared.items():
        sub = typer.Typer(no_args_is_help=True)
        for name, target in sorted(members, key=lambda member: member[0]):
            sub.command(name)(target)
        summaries = " ".join(f"{name}: {_first_line(target)}" for name, target in
                             sorted(members, key=lambda member: member[0]))
        root.add_typer(sub, name=group, help=f"{group.capitalize()} commands. {summaries}")
    return root


class _PlainTextHelpGroup(typer.core.TyperGroup):
    """The root group: every help text below it is plain text ("[serving] table",
    "STATE_DIR/<site>"), not Rich markup, so none of it is taken for a style tag."""

    _plain = False

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if not self._plain:
            for _, command in walk(self):
                command.help = _as_rich_text(command.help)
                for param in command.params:
                    param.help = _as_rich_text(getattr(param, "help", None))
            self._plain = True
        return super().main(*args, **kwargs)


def _as_rich_text(text: str | None) -> str | None:
    """``text`` escaped for Rich, its paragraphs unwrapped (the terminal wraps them)."""
    if not text:
        return text
    from rich.markup import escape

    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(escape(" ".join(p.split())) for p in paragraphs)


def _load(entry: EntryPoint) -> Any | None:
    """The entry point's object, or None when its package is not installed."""
    try:
        return entry.load()
    except ModuleNotFoundError as exc:
        package = entry.value.partition(":")[0].strip().partition(".")[0]
        if exc.name == package:
            logger.debug("%s: %s is not installed; its commands are left out",
                         entry.name, exc.name)
            return None
        raise  # an installed package with a broken import: a bug to see, not to hide


def _first_line(command: Any) -> str:
    return (inspect.getdoc(command) or "").split("\n\n")[0].replace("\n", " ").strip()


def main() -> None:
    try:
        build_app()()
    except KeyboardInterrupt:
        sys.exit(130)


# --- reference documentation -------------------------------------------------------------
def walk(command: click.Command, path: tuple[str, ...] = (PROG,)) -> Iterable[
        tuple[tuple[str, ...], click.Command]]:
    """Every command and group under ``command`` with its path, depth first."""
    yield path, command
    if isinstance(command, click.Group):
        for name in command.list_commands(click.Context(command)):
            yield from walk(command.commands[name], (*path, name))


def reference_markdown(app: typer.Typer) -> str:
    """Markdown reference of every command and option of ``app``."""
    root = typer.main.get_command(app)
    lines = ["# Command-line reference", "",
             "Generated from the command definitions; regenerate with",
             "`python -c 'from common.cli import write_reference; write_reference()'`.", ""]
    for path, command in walk(root):
        ctx = click.Context(command, info_name=" ".join(path))
        lines += [f"{'#' * min(len(path) + 1, 4)} `{' '.join(path)}`", ""]
        lines += [f"Usage: `{' '.join([ctx.command_path, *command.collect_usage_pieces(ctx)])}`",
                  ""]
        if command.help:
            lines += [inspect.cleandoc(command.help), ""]
        if isinstance(command, click.Group):
            lines += [f"- `{name}`: {sub.get_short_help_str(limit=200)}"
                      for name, sub in command.commands.items()] + [""]
        params = [p for p in command.params if p.name != "help"]
        if params:
            lines += ["| option | description | default |", "|---|---|---|"]
            lines += [_param_row(p, ctx) for p in params] + [""]
    return "\n".join(lines).rstrip() + "\n"


def _param_row(param: click.Parameter, ctx: click.Context) -> str:
    if isinstance(param, click.Option):
        names = ", ".join(f"`{n}`" for n in (*param.opts, *param.secondary_opts))
        help_text = param.help or ""
        if param.show_default not in (None, False) and isinstance(param.show_default, str):
            default = param.show_default
        elif param.default is not None and not param.is_flag and not param.multiple:
            default = str(param.default)
        elif param.is_flag and param.secondary_opts:
            default = f"--{'' if param.default else 'no-'}{param.name.replace('_', '-')}"
        else:
            default = ""
        if param.required:
            default = "required"
    else:
        names = f"`{param.human_readable_name}` (argument)"
        help_text = getattr(param, "help", None) or ""
        default = "required" if param.required else ""
    # Defaults the command states in its help text (its options default to None).
    stated = re.search(r"\s*\[default: ([^\]]*)\]\s*$", help_text)
    if stated:
        help_text, default = help_text[:stated.start()], stated.group(1)
    if getattr(param, "envvar", None):
        help_text += f" Environment: `{param.envvar}`."
    cells = [names, help_text, default]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _cell(text: str) -> str:
    """Markdown table cell: one line, no column breaks, no text taken for HTML tags."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


def write_reference(path: Path = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
                    ) -> Path:
    """Regenerate ``docs/cli.md`` from the installed commands."""
    from common.atomic import write_text_atomic

    write_text_atomic(path, reference_markdown(build_app()))
    return path


if __name__ == "__main__":
    main()
