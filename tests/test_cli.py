"""Tests for the ``cancer-alpha`` command line: composition, help texts, reference docs,
and how options merge into the run configuration."""

from __future__ import annotations

import re
from importlib.metadata import EntryPoint
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from common.cli import ENTRY_POINT_GROUP, build_app, reference_markdown, walk
from common.config import ModelConfig, RunConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]


def _entry(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


def _root() -> click.Group:
    return typer.main.get_command(build_app())


def _commands() -> list[tuple[tuple[str, ...], click.Command]]:
    return list(walk(_root()))


# --- composition ------------------------------------------------------------------------
def test_every_package_contributes_its_commands():
    names = {" ".join(path[1:]) for path, _ in _commands()}
    for expected in ("site check", "site budget", "site start", "coordinator start",
                     "coordinator sync-sites", "pki init", "simulate", "train-central",
                     "baselines", "evaluate", "audit privacy", "audit verify", "serve",
                     "registry add", "auth issue-token"):
        assert expected in names, expected


def test_package_that_is_not_installed_is_left_out():
    app = build_app([_entry("site", "client.cli:app"),
                     _entry("simulate", "no_such_package.cli:simulate"),
                     _entry("audit.privacy", "no_such_package.cli:audit_privacy"),
                     _entry("audit.verify", "server.serving.cli:audit_verify")])
    root = typer.main.get_command(app)
    assert set(root.commands) == {"site", "audit"}
    assert set(root.commands["audit"].commands) == {"verify"}
    assert CliRunner().invoke(app, ["site", "check", "--help"]).exit_code == 0


def test_broken_import_in_an_installed_package_is_not_hidden():
    # The package exists; a module inside it does not: a packaging bug, not an absent package.
    with pytest.raises(ModuleNotFoundError):
        build_app([_entry("ghost", "client.no_such_module:app")])


def test_group_shared_by_two_packages_holds_both_commands():
    audit = dict(_root().commands)["audit"]
    assert isinstance(audit, click.Group)
    assert set(audit.commands) == {"privacy", "verify"}


def test_help_does_not_import_torch_or_flower():
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from common.cli import build_app;"
            "r = CliRunner().invoke(build_app(), ['simulate', '--help']);"
            "assert r.exit_code == 0, r.output;"
            "print(sorted(m for m in ('torch', 'flwr', 'opacus') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# --- help texts ---------------------------------------------------------------------------
def _squash(text: str) -> str:
    """``text`` without whitespace and the help panels' box lines."""
    return re.sub(r"[\s│─╭╮╰╯]+", "", text)


@pytest.mark.parametrize("path", [" ".join(p[1:]) for p, _ in walk(
    typer.main.get_command(build_app()))])
def test_help_keeps_every_word_of_every_option(path: str):
    command = dict(_commands())[("cancer-alpha", *path.split())] if path else _root()
    result = CliRunner().invoke(build_app(), [*path.split(), "--help"],
                                env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    shown = _squash(result.output)
    assert (command.help or "").strip(), f"{path or 'cancer-alpha'}: no help text"
    assert _squash(command.help or "") in shown, (path, command.help, result.output)
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        assert param.help, f"{path} {param.opts[0]}: no help text"
        # Whitespace aside, the text must be there verbatim: no word, bracket or
        # character lost to markup or cut off at the terminal's width.
        assert _squash(param.help) in shown, (path, param.opts, param.help, result.output)
        assert "…" not in result.output


# --- reference documentation ------------------------------------------------------------
def test_reference_names_every_command_and_option():
    doc = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    for path, command in _commands():
        assert f"`{' '.join(path)}`" in doc, f"docs/cli.md lacks {' '.join(path)}"
        for param in command.params:
            names = (param.opts if isinstance(param, click.Option)
                     else [param.human_readable_name])
            for name in names:
                assert f"`{name}`" in doc or name in doc, f"{' '.join(path)} {name}"


def test_reference_is_regenerated_from_the_commands():
    doc = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert doc == reference_markdown(build_app()), (
        "docs/cli.md is stale: python -c 'from common.cli import write_reference; "
        "write_reference()'")


# --- options merge into the run configuration ------------------------------------------
@pytest.fixture
def captured(monkeypatch) -> list[RunConfig]:
    """Run configs `simulate` would run; the run itself is refused before training."""
    import simulations.runner

    seen: list[RunConfig] = []

    def fake(cfg: RunConfig, **_: object) -> Path:
        seen.append(cfg)
        raise ValueError("stop before training")

    monkeypatch.setattr(simulations.runner, "simulate", fake)
    return seen


def test_simulate_without_options_runs_the_dataclass_defaults(captured):
    result = CliRunner().invoke(build_app(), ["simulate"])
    assert result.exit_code == 2 and "stop before training" in result.output
    assert captured == [RunConfig()]
    assert captured[0].dp == "distributed"


def test_only_given_options_override(captured):
    CliRunner().invoke(build_app(), ["simulate", "--dp", "none", "--rounds", "3",
                                     "--epsilon", "2.5", "--secagg"])
    cfg = captured[0]
    assert cfg == RunConfig.preset("none", rounds=3, epsilon=2.5, secagg=True)
    assert cfg.local_epochs == RunConfig.preset("none").local_epochs != RunConfig().local_epochs
    assert cfg.model == ModelConfig() and cfg.train == TrainConfig()


def test_simulate_passes_the_attack_and_the_choice_of_attackers(monkeypatch):
    import simulations.runner

    seen: list[dict] = []

    def fake(cfg: RunConfig, **options: object) -> Path:
        seen.append(options)
        raise ValueError("stop before training")

    monkeypatch.setattr(simulations.runner, "simulate", fake)
    CliRunner().invoke(build_app(), ["simulate", "--dp", "none", "--attack", "nan",
                                     "--malicious", "2", "--attackers", "random"])
    CliRunner().invoke(build_app(), ["simulate", "--dp", "none", "--attack", "noise"])
    assert [(o["attack"], o["malicious"], o["attackers"]) for o in seen] == [
        ("nan", 2, "random"), ("noise", 1, "largest")]


@pytest.mark.parametrize("command", ["simulate", "train-central", "cv"])
def test_an_earlier_run_directory_is_never_written_over(command, tmp_path, captured):
    earlier = tmp_path / "run"
    earlier.mkdir()
    (earlier / "metrics.json").write_text('{"f1_macro": 0.7}')
    result = CliRunner().invoke(build_app(), [command, "--out", str(earlier)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "already holds files (metrics.json)" in " ".join(result.output.split())
    assert (earlier / "metrics.json").read_text() == '{"f1_macro": 0.7}'
    assert captured == []  # refused before any training
    (tmp_path / "empty").mkdir()
    CliRunner().invoke(build_app(), ["simulate", "--out", str(tmp_path / "empty")])
    assert captured[0].out == str(tmp_path / "empty")


def test_train_central_keeps_the_non_private_model(monkeypatch):
    import common.simulated_federation

    seen: list[RunConfig] = []

    def fake(cfg: RunConfig) -> None:
        seen.append(cfg)
        raise FileNotFoundError("stop")

    monkeypatch.setattr(common.simulated_federation, "load_federation", fake)
    CliRunner().invoke(build_app(), ["train-central", "--epochs", "7"])
    CliRunner().invoke(build_app(), ["train-central", "--seed", "3"])
    assert seen[0] == RunConfig.preset("none", rounds=7, local_epochs=1)
    assert seen[1] == RunConfig.preset("none", seed=3)


# --- configuration dicts ------------------------------------------------------------------
def test_unknown_keys_are_rejected_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"'roundz'.*valid keys: .*\brounds\b"):
        RunConfig.from_dict({"roundz": 3})
    with pytest.raises(ValueError, match=r"'d_modle'.*valid keys: kind, d_model"):
        RunConfig.from_dict({"model": {"d_modle": 3}})
    with pytest.raises(ValueError, match=r"'learning-rate'.*valid keys: .*train\.lr"):
        RunConfig.from_flower({"learning-rate": 0.1})


def test_stored_model_config_with_an_old_key_still_loads():
    stored = {**ModelConfig().to_dict(), "retired_option": 1}
    assert ModelConfig.from_dict(stored) == ModelConfig()
    with pytest.raises(ValueError, match="retired_option"):
        ModelConfig.from_dict(stored, strict=True)


def test_virtual_hospitals_keep_state_in_the_run_unless_told_otherwise():
    assert RunConfig(out="runs/x").site_state_root() == Path("runs/x/site-state")
    assert RunConfig(out="runs/x", state_dir="/kept").site_state_root() == Path("/kept")
