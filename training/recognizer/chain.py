"""The recognizer's whole training chain from one run config: data, every compression stage, ship, calibrate,
report, in order; each step is a command of its own module (``training.recognizer.data``, ``train``, ``ship``,
``calibrate``, ``report``), built from the config.

    make recognizer     # = python -m training.recognizer.chain --config training/recognizer/configs/recognizer.yaml
    python -m training.recognizer.chain --config training/recognizer/configs/recognizer.yaml --list
    python -m training.recognizer.chain --config ... --from prune          # that step and the ones after it
    python -m training.recognizer.chain --config ... --only ship --seed 1  # one step (a list: ship,report)

A step whose ``done`` file exists is skipped (a training stage writes ``history.json`` when it finishes; an
interrupted one resumes from its checkpoint when run again), so rerunning the command continues the chain.
Training stages get ``--seed`` and ``--device`` (the config's, or the flags here). The resolved steps and the
commands run go to ``<log>`` (default ``runs/recognizer/chain.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
RUN_CONFIG = "training/recognizer/configs/recognizer.yaml"


@dataclass(frozen=True)
class Step:
    """One command of the chain."""

    name: str  # what --from / --only name
    run: str  # module and positional arguments: "training.recognizer.train kd"
    args: dict[str, Any] = field(default_factory=dict)  # --flag value (true: a bare --flag; false/null: left out)
    done: str = ""  # skipped when this file exists ("": always run)
    train: bool = False  # a training stage: gets --seed and --device

    def command(self, seed: int, device: str) -> list[str]:
        """``python -m`` arguments of this step."""
        out = shlex.split(self.run)
        args = {**self.args, **({"seed": seed, "device": device} if self.train else {})}
        for key, value in args.items():
            if value is True:
                out.append(f"--{key}")
            elif value is not False and value is not None:
                out += [f"--{key}", str(value)]
        return out


@dataclass(frozen=True)
class Chain:
    """A run config: seed, device and the steps in order."""

    steps: list[Step]
    seed: int = 0  # every training stage's torch init and batch sampling
    device: str = "cpu"  # torch device of the training stages
    log: str = "runs/recognizer/chain.json"  # where the resolved steps and the commands run are written

    @classmethod
    def load(cls, path: Path) -> Chain:
        """Read a run config; ValueError naming the key that is wrong."""
        data = yaml.safe_load(path.read_text()) or {}
        unknown = sorted(set(data) - {"steps", "seed", "device", "log"})
        if unknown or not isinstance(data.get("steps"), list):
            raise ValueError(f"{path}: want keys seed, device, log and a list of steps (unknown: {unknown})")
        steps = []
        for i, s in enumerate(data["steps"]):
            try:
                steps.append(Step(**s))
            except TypeError as e:
                raise ValueError(f"{path}: step {i + 1} ({s.get('name', '?')}): {e}") from None
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"{path}: step names repeat: {names}")
        return cls(steps, **{k: v for k, v in data.items() if k != "steps"})

    def select(self, start: str | None, only: str | None) -> list[Step]:
        """The steps from ``start`` on, or the ``only`` ones (comma-separated names)."""
        names = [s.name for s in self.steps]
        wanted = [n for n in (only or "").split(",") if n] + ([start] if start else [])
        bad = [n for n in wanted if n not in names]
        if bad:
            raise ValueError(f"no step named {', '.join(bad)} (steps: {', '.join(names)})")
        if only:
            return [s for s in self.steps if s.name in only.split(",")]
        return self.steps[names.index(start):] if start else list(self.steps)


def run(chain: Chain, steps: list[Step], seed: int, device: str, force: bool = False) -> list[dict[str, Any]]:
    """Run ``steps`` in order (skipping those done unless ``force``); what was run, with times."""
    record = []
    for step in steps:
        cmd = step.command(seed, device)
        if step.done and (REPO / step.done).exists() and not force:
            logger.info("%s: done (%s), skipped", step.name, step.done)
            record.append({"step": step.name, "command": cmd, "skipped": True})
            continue
        logger.info("%s: python -m %s", step.name, shlex.join(cmd))
        t0 = time.time()
        subprocess.run([sys.executable, "-m", *cmd], cwd=REPO, check=True)  # noqa: S603 - our own modules
        record.append({"step": step.name, "command": cmd, "seconds": round(time.time() - t0, 1)})
    return record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=RUN_CONFIG, help="run config (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=None, help="seed of every training stage (default: the config's)")
    ap.add_argument("--device", default=None, help="torch device of the training stages (default: the config's)")
    ap.add_argument("--from", dest="start", default=None, help="start at this step (default: the first)")
    ap.add_argument("--only", default=None, help="run only these steps, comma-separated (default: all)")
    ap.add_argument("--force", action="store_true", help="run steps whose done file exists too (default: skip)")
    ap.add_argument("--list", action="store_true", help="print the steps and their commands, run nothing")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        chain = Chain.load(REPO / args.config)
        steps = chain.select(args.start, args.only)
    except (OSError, ValueError) as e:
        ap.error(str(e))
    seed = chain.seed if args.seed is None else args.seed
    device = args.device or chain.device
    if args.list:
        for s in steps:
            done = " (done)" if s.done and (REPO / s.done).exists() else ""
            print(f"{s.name}{done}: python -m {shlex.join(s.command(seed, device))}")
        return
    record = run(chain, steps, seed, device, args.force)
    log = REPO / chain.log
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(json.dumps({"config": args.config, "seed": seed, "device": device, "steps": record}, indent=1))
    logger.info("chain done: %s", log)


if __name__ == "__main__":
    main()
