"""Run configs in the repo rebuild the shipped models: every model.json names one, the recognizer chain's steps
are valid commands of their modules, run configs load with flag overrides, and the chain skips what is done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecam import MODELS_DIR

REPO = Path(__file__).resolve().parents[1]
RECOGNIZER = "training/recognizer/configs/recognizer.yaml"
ORL = "training/recognizer/configs/orl.yaml"


@pytest.mark.parametrize("model", sorted(p.parent.name for p in MODELS_DIR.glob("*/model.json")))
def test_every_shipped_model_names_its_run_config(model: str) -> None:
    training = json.loads((MODELS_DIR / model / "model.json").read_text()).get("training", {})
    if model == "face_detector" and "config" not in training:
        pytest.skip("the detector's export writes training.config (training/detector/configs/wild.yaml): pending")
    assert (REPO / training["config"]).is_file(), training


def test_recognizer_chain_steps_are_valid_commands(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    from training.recognizer import data, train
    from training.recognizer.chain import Chain, main

    chain = Chain.load(REPO / RECOGNIZER)
    names = [s.name for s in chain.steps]
    assert names[-4:] == ["crops_det", "ship", "report", "calibrate"]
    assert {"kd", "prune", "lowrank", "finetune"} <= set(names)
    parsers = {"training.recognizer.train": train.parser(), "training.recognizer.data": data.parser()}
    for step in chain.steps:
        cmd = step.command(seed=7, device="cuda")
        module, args = cmd[0], cmd[1:]
        assert (REPO / (module.replace(".", "/") + ".py")).is_file(), step
        if module in parsers:
            ns = parsers[module].parse_args(args)  # a flag the module does not know exits 2 here
            if step.train:
                assert ns.seed == 7 and ns.device == "cuda"
        for value in step.args.values():  # every checkpoint a stage starts from is made by an earlier step
            if isinstance(value, str) and value.endswith("ckpt.pt"):
                assert any(s.done == value.replace("ckpt.pt", "history.json") for s in chain.steps), value
    main(["--config", RECOGNIZER, "--list", "--seed", "3"])
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == len(names) and "--seed 3" in next(x for x in listed if x.startswith("prune"))


def test_chain_runs_in_order_and_skips_what_is_done(tmp_path: Path) -> None:
    from training.recognizer.chain import Chain, Step, run

    done = tmp_path / "done.txt"
    done.write_text("x")
    steps = [Step("first", "platform", done=str(done)), Step("second", "platform", {"terse": True})]
    chain = Chain(steps)
    record = run(chain, chain.select(None, None), seed=0, device="cpu")
    assert [r["step"] for r in record] == ["first", "second"] and record[0]["skipped"] and "seconds" in record[1]
    assert record[1]["command"] == ["platform", "--terse"]
    assert [s.name for s in chain.select("second", None)] == ["second"]
    with pytest.raises(ValueError, match="no step named nope"):
        chain.select(None, "first,nope")


def test_a_bad_chain_config_names_the_problem(tmp_path: Path) -> None:
    from training.recognizer.chain import Chain

    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - {name: a, run: x, argz: {}}\n")
    with pytest.raises(ValueError, match="step 1 \\(a\\)"):
        Chain.load(bad)
    bad.write_text("seed: 0\nstep: []\n")
    with pytest.raises(ValueError, match="unknown: \\['step'\\]"):
        Chain.load(bad)


def test_orl_run_config_with_overrides() -> None:
    pytest.importorskip("torch")
    from training.recognizer.orl import COMMAND, OrlConfig
    from training.runconfig import parse_run_config

    cfg, command = parse_run_config(OrlConfig, COMMAND, argv=["--config", ORL, "--seed", "3", "--steps", "10"])
    assert cfg.seed == 3 and cfg.steps == 10 and cfg.run_config == ORL and cfg.keep == 0.5
    assert command == f"{COMMAND} --config {ORL} --seed 3 --steps 10"
    assert parse_run_config(OrlConfig, COMMAND, argv=[])[0] == OrlConfig()  # no file: the dataclass defaults


def test_run_config_unknown_key_is_a_usage_error(tmp_path: Path) -> None:
    from dataclasses import dataclass

    from training.runconfig import parse_run_config

    @dataclass(frozen=True)
    class Small:
        steps: int = 1
        fast: bool = False

    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\nsetps: 6\n")
    with pytest.raises(SystemExit) as e:
        parse_run_config(Small, "cmd", argv=["--config", str(path)])
    assert e.value.code == 2
    path.write_text("steps: 5\n")
    assert parse_run_config(Small, "cmd", argv=["--config", str(path), "--fast", "true"])[0] == Small(5, True)
