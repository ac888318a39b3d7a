"""Print the images' pip requirements, read from pyproject.toml (see Dockerfile).

The project's dependencies with Flower's ``simulation`` extra dropped (it pulls Ray, and
the images run Flower's deployment engine only), plus the optional extras named on the
command line that pyproject defines (``serve`` for the inference service, once it exists).

    python requirements.py [--pyproject FILE] [EXTRA ...] > requirements.txt
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

_EXTRAS = re.compile(r"\[([^\]]*)\]")


def without_simulation(requirement: str) -> str:
    """``flwr[simulation]==1.41.0`` -> ``flwr==1.41.0``; other extras are kept."""

    def keep(m: re.Match[str]) -> str:
        extras = [e.strip() for e in m.group(1).split(",") if e.strip() != "simulation"]
        return f"[{','.join(extras)}]" if extras else ""

    return _EXTRAS.sub(keep, requirement, count=1)


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """Runtime requirements of the project plus those of ``extras`` it defines."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs.extend(optional.get(extra, []))
    return [without_simulation(r) for r in reqs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("extras", nargs="*")
    args = parser.parse_args()
    print("\n".join(requirements(args.pyproject, args.extras)))


if __name__ == "__main__":
    main()
