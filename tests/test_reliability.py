"""Runs you can trust: every bad input of the command line gets one clean error and leaves an existing run folder
untouched; kill -9 at random moments (checkpoint writes included) never costs more than the steps since the last
checkpoint; a full disk and a read-only folder are reported, not fatal to the run."""
from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from rmflow.cli import main

TINY = ["model.hidden=16", "model.depth=1", "train.batch_size=32", "train.progress=false", "train.steps=6",
        "train.ckpt_every=3", "train.log_every=2", "rmflow.nll_start_step=3", "rmflow.teacher_bank=256",
        "rmflow.teacher_filter=0", "rmflow.teacher_steps=2", "eval.num_samples=100"]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", "ring", f"out_dir={out}", "name=good", *TINY]) == 0
    return out, out / "good"


def _bad_yaml(tmp: Path) -> str:
    path = tmp / "broken.yaml"
    path.write_text("base: ring\ntrain: {steps: 3\n")
    return str(path)


# (arguments, exit code, a phrase the one-line error must contain); {out}: out_dir, {run}: the good run, {tmp}: a
# scratch folder
BAD_INPUTS = [
    (["train", "ring", "out_dir={out}", "name=good", "model.hidden=64"], 2, "different model"),
    (["train", "ring", "out_dir={out}", "name=../../escaped"], 2, "config key 'name'"),
    (["train", "ring", "out_dir={out}", "name=/abs/path"], 2, "config key 'name'"),
    (["train", "ring", "out_dir={out}", "name="], 2, "config key 'name'"),
    (["compare", "ring", "out_dir={out}", "seeds=[]"], 2, "seeds"),
    (["compare", "ring", "out_dir={out}", "seeds=abc"], 2, "seeds"),
    (["compare", "ring", "out_dir={out}", "--train-only", "seeds=[]"], 2, "seeds"),
    (["compare", "ring", "out_dir={out}", "--methods", "nosuch"], 2, "unknown method"),
    (["evaluate", "{run}", "--samplers", "meanflow@0"], 2, "sampler 'meanflow@0'"),
    (["evaluate", "{run}", "--samplers", "fm@-3"], 2, "sampler 'fm@-3'"),
    (["evaluate", "{run}", "--samplers", "foo"], 2, "unknown sampler"),
    (["evaluate", "{run}", "--samplers", "meanflow@x"], 2, "sampler 'meanflow@x'"),
    (["sample", "{run}", "--out", "{tmp}/x.npy", "--sampler", "foo"], 2, "unknown sampler"),
    (["sample", "{run}", "--out", "/nonexistent/x.npy"], 2, "does not exist"),
    (["sample", "{run}", "--out", "{tmp}/x.npy", "--num-samples", "0"], 2, "must be >= 1"),
    (["sample", "{run}", "--out", "{tmp}/x.npy", "--num-samples", "-5"], 2, "must be >= 1"),
    (["evaluate", "{tmp}"], 2, "not a run folder"),
    (["bench", "ring", "--methods", "fm,foo"], 2, "unknown bench method"),
    (["bench", "ring", "--variant", "lean"], 2, "--variant"),
    (["train", "{yaml}"], 2, "not valid YAML (line 3"),
    (["train", "nosuchpreset"], 2, "no config file or preset"),
    (["train", "ring", "out_dir={out}", "train.stepz=3"], 2, "unknown config key 'train.stepz'"),
    (["train", "ring", "out_dir={out}", "train.steps=abc"], 2, "config key 'train.steps'"),
    (["train", "ring", "out_dir={out}", "train.steps=[1"], 2, "not valid YAML"),
    (["train", "ring", "out_dir={out}", "rmflow.pairing=nearest"], 2, "must be one of"),
    (["train", "ring", "out_dir={out}", "flow.sigma=0.5"], 2, "rmflow.sigma_min"),
    (["train", "ring", "out_dir={out}", "task.name=mytask"], 2, "unknown task 'mytask'"),
    (["--import", "no_such_module_xyz", "presets"], 2, "--import no_such_module_xyz"),
    (["train", "ring", "out_dir={out}", "name=good", "train.steps"], 2, "must look like key.sub=value"),
]


@pytest.mark.parametrize("argv, code, phrase", BAD_INPUTS, ids=[" ".join(a[:3]) for a, _, _ in BAD_INPUTS])
def test_bad_input_gives_one_clean_error_and_changes_nothing(good_run, tmp_path, capsys, argv, code, phrase):
    out, run = good_run
    before = snapshot(out)
    args = [a.format(out=out, run=run, tmp=tmp_path, yaml=_bad_yaml(tmp_path)) for a in argv]
    try:
        rc = main(args)
    except SystemExit as e:            # argparse's own errors (usage line + error line)
        rc = e.code
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:") or ": error:" in ln]
    assert len(lines) == 1 and phrase in lines[0], err
    assert snapshot(out) == before        # no file of any existing run changed (and none was added)


def test_a_second_command_on_a_run_in_use_is_refused(good_run, capsys):
    from rmflow.train.rundir import RunLock
    out, run = good_run
    before = snapshot(out)
    with RunLock(run):
        assert main(["train", "ring", f"out_dir={out}", "name=good", *TINY]) == 1
    err = capsys.readouterr().err
    assert "in use by another rmflow process" in err and "Traceback" not in err
    before.pop(".lock", None)
    after = snapshot(out)
    after.pop(".lock", None)
    assert after == before


def test_evaluate_on_a_read_only_run_prints_its_results(good_run, capsys, monkeypatch):
    import rmflow.train.rundir as rundir
    out, run = good_run

    def read_only(path, text):
        raise OSError(errno.EROFS, f"could not write {path}: Read-only file system")
    monkeypatch.setattr(rundir, "atomic_write_text", read_only)
    assert main(["evaluate", str(run), "--samplers", "rmflow", "--num-samples", "50"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["sampler"] == "rmflow"           # the results are not lost
    assert captured.err.startswith("error: could not write") and "Traceback" not in captured.err


def test_corrupt_newest_checkpoint_falls_back_with_a_warning(tmp_path):
    from rmflow.config import load_config
    from rmflow.train import Trainer
    cfg = load_config("ring", [f"out_dir={tmp_path}", "name=r", *TINY, "train.ckpt_every=1"])
    Trainer(cfg, cfg.run_dir).train()
    newest = cfg.run_dir / "checkpoints" / "step_00000006.safetensors"
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0xFF
    newest.write_bytes(bytes(data))
    (cfg.run_dir / "checkpoints" / "step_final.json").write_text("{}")      # a stray file is ignored
    tr = Trainer(cfg, cfg.run_dir)
    with pytest.warns(UserWarning, match="step_00000006.*falling back to step_00000005"):
        assert tr.resume()
    assert tr.step == 5


def test_full_disk_during_a_checkpoint_keeps_the_run_resumable(tmp_path, monkeypatch):
    import rmflow.train.checkpoint as ck
    from rmflow.config import load_config
    from rmflow.train import CheckpointError, Trainer
    cfg = load_config("ring", [f"out_dir={tmp_path}", "name=r", *TINY])
    Trainer(cfg, cfg.run_dir).train(steps=3)
    good = snapshot(cfg.run_dir / "checkpoints")

    def full(tensors, path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ck, "save_file", full)
    tr = Trainer(cfg, cfg.run_dir)
    assert tr.resume() and tr.step == 3
    with pytest.raises(CheckpointError, match="could not write checkpoint"):
        tr.train()
    assert snapshot(cfg.run_dir / "checkpoints") == good                    # no partial or temporary files
    monkeypatch.undo()
    again = Trainer(cfg, cfg.run_dir)
    with pytest.warns(UserWarning, match="metrics.jsonl: dropped"):
        assert again.resume() and again.step == 3
    again.train()
    steps = [json.loads(line)["step"] for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]


def test_kill_9_at_random_moments_never_damages_the_run(tmp_path):
    """A training process (a checkpoint after every step, so most kills land in a checkpoint write) killed with
    SIGKILL at random moments, eight times; then it finishes. The newest checkpoint verifies, metrics.jsonl has
    one row per logged step, and the result equals an uninterrupted run bit for bit."""
    from rmflow.tools.fault_injection import kill_loop
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    res = kill_loop(tmp_path, kills=8, steps=60, env=env)
    assert res["kills_sent"] >= 4 and res["rounds_that_resumed"] >= 3 and res["final_exit_code"] == 0
    assert res["metric_rows"] == 12 and res["duplicate_metric_rows"] == 0 and res["missing_metric_rows"] == 0
    assert res["temporary_files_left"] == 0 and res["bit_exact_with_uninterrupted_run"]


def test_command_line_overrides_win_over_a_methods_settings():
    from rmflow.compare import method_config
    from rmflow.config import apply_overrides, build_config, read_yaml
    base = read_yaml("ring-demo")
    spec = build_config(base).compare["meanflow"]
    assert "train.steps" in spec.set
    assert method_config(base, "meanflow", spec, 0, ["train.steps=200"]).train.steps == 200
    # a method defined on the command line (compare.NAME=...) refers to the preset's methods
    extra = 'compare.lam={"from": "meanflow", "set": {"rmflow.lambda_nll": 0.5}}'
    root = build_config(apply_overrides(copy.deepcopy(base), [extra]))
    cfg = method_config(apply_overrides(base, [extra]), "lam", root.compare["lam"], 0, [extra, "train.steps=9"])
    assert cfg.rmflow.lambda_nll == 0.5 and cfg.train.steps == 9


def test_help_documents_overrides_run_names_resume_and_progress(capsys):
    for command in ("train", "compare"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert all(w in text for w in ("key.sub=value", "name=", "Resume", "train.progress=false"))


def test_progress_becomes_log_lines_when_output_is_not_a_terminal(tmp_path, capsys):
    from rmflow.config import load_config
    from rmflow.train import Trainer
    cfg = load_config("ring", [f"out_dir={tmp_path}", *TINY, "train.progress=true"])
    Trainer(cfg).train()
    err = capsys.readouterr().err
    assert "\r" not in err and [ln.split(" loss")[0] for ln in err.splitlines()] == [
        "ring: step 2/6", "ring: step 4/6", "ring: step 6/6"]


def test_a_task_registered_from_outside_trains_and_samples(tmp_path, monkeypatch, capsys):
    (tmp_path / "mytask_mod.py").write_text(
        "from dataclasses import dataclass\n"
        "from rmflow.tasks import TaskSpec, register_task\n"
        "from rmflow.tasks.synthetic import SyntheticData, SyntheticModel, SyntheticTask\n\n\n"
        "@dataclass\nclass MyData(SyntheticData):\n    name: str = 'mytask'\n\n\n"
        "register_task(TaskSpec('mytask', MyData, SyntheticModel, SyntheticTask))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "runs"
    assert main(["--import", "mytask_mod", "train", "ring", "task.name=mytask", f"out_dir={out}", "name=m",
                 *TINY, "rmflow.lambda_nll=0"]) == 0
    from rmflow.tasks.base import _REGISTRY
    _REGISTRY.pop("mytask")
    sys.modules.pop("mytask_mod")
    assert main(["sample", str(out / "m"), "--out", str(tmp_path / "x.npy")]) == 2
    assert "import the module that registers it" in capsys.readouterr().err
    assert main(["--import", "mytask_mod", "sample", str(out / "m"), "--out", str(tmp_path / "x.npy")]) == 0


def test_tensorboard_scalars_next_to_the_jsonl(tmp_path):
    from rmflow.config import load_config
    from rmflow.train import Trainer
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    cfg = load_config("ring", [f"out_dir={tmp_path}", "name=tb", *TINY, "train.tensorboard=true"])
    Trainer(cfg, cfg.run_dir).train()
    events = EventAccumulator(str(cfg.run_dir / "tensorboard"))
    events.Reload()
    loss = events.Scalars("loss")
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in loss] == [r["step"] for r in rows] == [2, 4, 6]
    assert all(abs(e.value - r["loss"]) < 1e-6 for e, r in zip(loss, rows))
    # `rmflow evaluate` on that run adds its metrics and the sample figure at the checkpoint's step
    assert main(["evaluate", str(cfg.run_dir), "--samplers", "meanflow@1", "--num-samples", "200"]) == 0
    evaluated = json.loads((cfg.run_dir / "eval.json").read_text())
    events = EventAccumulator(str(cfg.run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert "eval/samples" in events.Tags()["images"]
    tv = events.Scalars("eval/meanflow@1/tv")
    assert [e.step for e in tv] == [6] and abs(tv[0].value - evaluated[0]["tv"]) < 1e-6


def test_presets_print_one_sentence_and_a_measured_cpu_time(capsys):
    from rmflow.config import PRESET_DIR
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [p.stem for p in sorted(PRESET_DIR.glob("*.yaml"))]
    assert len(lines) == 2 * len(names)
    for name, first, cpu in zip(names, lines[::2], lines[1::2]):
        assert first.startswith(name) and first.rstrip().endswith(".")
        assert "CPU time: ~" in cpu and "not measured" not in cpu


def test_bench_method_list_takes_no_override_for_a_method(monkeypatch):
    import rmflow.bench as bench
    seen = {}
    monkeypatch.setattr(bench, "run_benchmark", lambda base, methods, *a, **k: seen.update(
        methods=methods, threads=base["train"]["num_threads"]) or {})
    monkeypatch.setattr(bench, "report", lambda res: "")
    assert main(["bench", "ring", "--methods", "fm", "meanflow,rmflow", "train.num_threads=1"]) == 0
    assert seen == {"methods": ["fm", "meanflow", "rmflow"], "threads": 1}
