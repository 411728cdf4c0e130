"""Run configs: a frozen dataclass of a job's settings, filled from a YAML file, with flags that override it.

    cfg, command = parse_run_config(OrlConfig, "python -m training.recognizer.orl", __doc__)
    # python -m training.recognizer.orl --config training/recognizer/configs/orl.yaml --seed 1

Every dataclass field is a flag (``--steps 300``; booleans take true/false); the YAML file sets the defaults of
those flags, so the command line that reproduces a run is the config path plus the flags given. The resolved
config (``dataclasses.asdict``) goes into the job's outputs; ``run_config`` holds the file's path.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def parse_run_config(cls: type[T], command: str, doc: str | None = None,
                     argv: list[str] | None = None) -> tuple[T, str]:
    """``cls`` from ``--config FILE`` (YAML) and ``--field value`` overrides; and the command that reproduces it.

    Raises:
        SystemExit: an unknown key in the file or a bad value (argparse's usage error, exit 2).
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default="")
    path = pre.parse_known_args(argv)[0].config
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="", help="run config YAML (default: none, the dataclass defaults)")
    given: dict[str, Any] = (yaml.safe_load(Path(path).read_text()) or {}) if path else {}
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(given) - set(fields))
    if unknown:
        ap.error(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(fields))})")
    defaults = cls()
    for name in fields:
        if name == "run_config":
            continue
        default = given.get(name, getattr(defaults, name))
        kind = parse_bool if isinstance(default, bool) else type(default)
        ap.add_argument(f"--{name}", type=kind, default=default, help=f"(default: {default})")
    ns = vars(ap.parse_args(argv))
    config = ns.pop("config")
    if "run_config" in fields:
        ns["run_config"] = config
    args = sys.argv[1:] if argv is None else argv
    return cls(**ns), " ".join([command, *map(shlex.quote, args)])


def parse_bool(text: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no) as a flag value."""
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"'{text}' is not a boolean (true/false)")
