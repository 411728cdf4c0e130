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

    A field whose default is itself a dataclass is a section: a mapping of the same name in the file, flags
    ``--section.field``.

    Raises:
        SystemExit: an unknown key in the file or a bad value (argparse's usage error, exit 2).
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default="")
    path = pre.parse_known_args(argv)[0].config
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="", help="run config YAML (default: none, the dataclass defaults)")
    if path and not Path(path).is_file():
        ap.error(f"--config {path}: no such file")
    given: dict[str, Any] = (yaml.safe_load(Path(path).read_text()) or {}) if path else {}
    defaults = cls()
    sections = {f.name: type(getattr(defaults, f.name)) for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                if dataclasses.is_dataclass(getattr(defaults, f.name))}
    levels = [("", cls, given, "")] + [(f"{n}.", c, given.get(n) or {}, f" in {n}") for n, c in sections.items()]
    for prefix, kind_cls, values, where in levels:
        names = {f.name for f in dataclasses.fields(kind_cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - names)
        if unknown:
            ap.error(f"{path}: unknown key(s) {', '.join(unknown)}{where} (known: {', '.join(sorted(names))})")
        for name in sorted(names - {"run_config"} - (set(sections) if not prefix else set())):
            default = values.get(name, getattr(kind_cls(), name))
            kind = parse_bool if isinstance(default, bool) else type(default)
            ap.add_argument(f"--{prefix}{name}", type=kind, default=default, help=f"(default: {default})")
    ns = vars(ap.parse_args(argv))
    config = ns.pop("config")
    top = {k: v for k, v in ns.items() if "." not in k}
    for n, c in sections.items():
        top[n] = c(**{k[len(n) + 1:]: v for k, v in ns.items() if k.startswith(n + ".")})
    if "run_config" in {f.name for f in dataclasses.fields(cls)}:  # type: ignore[arg-type]
        top["run_config"] = config
    args = sys.argv[1:] if argv is None else argv
    return cls(**top), " ".join([command, *map(shlex.quote, args)])


def parse_bool(text: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no) as a flag value."""
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"'{text}' is not a boolean (true/false)")
