"""A user's mistake is one line, `sftrl: error: ...` naming the key/file, and exit status 2.

Each case runs the README's entry point in a subprocess, as a user would, and is checked before
any training: the whole run takes seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sftrl import config_lib, errors
from sftrl.stages.rl import rl_run_dir
from sftrl.train import common
from sftrl.train.progress import ProgressLog, format_duration

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "sftrl" / "data" / "task_files" / "tokenizer"


def _main(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sftrl.main", *args], cwd=cwd, capture_output=True, text=True,
        timeout=300, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})


def _the_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("sftrl: error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def test_a_typo_in_a_config_key(tmp_path: Path) -> None:
    line = _the_error_line(_main("--config=configs/tiny.py", f"--workdir={tmp_path}",
                                 "--config.sft.num_stepz=3"))
    assert "--config.sft.num_stepz" in line and "num_steps" in line


def test_a_variant_that_does_not_exist(tmp_path: Path) -> None:
    line = _the_error_line(_main("--config=configs/llama8b.py:llama31", f"--workdir={tmp_path}"))
    assert "'llama31' is not a variant" in line and "llama3.1" in line


def test_a_missing_config_file(tmp_path: Path) -> None:
    line = _the_error_line(_main("--config=configs/nope.py", f"--workdir={tmp_path}"))
    assert "configs/nope.py" in line


@pytest.mark.parametrize(("override", "message"), [
    ((), "study.sweep_dir: the study stage needs the sweep's --workdir"),
    (("--config.study.sweep_dir=no/such/sweep",), "study.sweep_dir: no/such/sweep: no such folder"),
])
def test_the_study_stage_needs_its_sweep(tmp_path: Path, override: tuple[str, ...],
                                         message: str) -> None:
    line = _the_error_line(_main("--config=configs/tiny.py", f"--workdir={tmp_path}",
                                 "--stage=study", *override))
    assert line == f"sftrl: error: {message}"

def test_a_value_of_the_wrong_type(tmp_path: Path) -> None:
    line = _the_error_line(_main("--config=configs/tiny.py", f"--workdir={tmp_path}",
                                 "--config.sft.num_steps=abc"))
    assert "--config.sft.num_steps" in line


def test_an_invalid_value(tmp_path: Path) -> None:
    line = _the_error_line(_main("--config=configs/tiny.py", f"--workdir={tmp_path}",
                                 "--config.mesh.tensor=3"))
    assert "mesh" in line


def test_a_malformed_data_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    good = {"problem": "1+1?", "solution": "\\boxed{2}"}
    bad.write_text(json.dumps(good) + "\n{not json\n")
    line = _the_error_line(_main(
        "--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}", "--stage=sft",
        "--config.data.source=files", f"--config.data.train_files=('{bad}',)",
        f"--config.data.tokenizer={TOKENIZER}", "--config.pipeline.sft_variants=()"))
    assert f"{bad}:2" in line and "malformed JSON" in line


def test_a_missing_rl_prompt_file_fails_before_any_training(tmp_path: Path) -> None:
    """The pipeline would train and evaluate SFT for an hour before RL read the file."""
    missing = tmp_path / "prompts.jsonl"
    line = _the_error_line(_main(
        "--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}",
        "--config.rl.prompt_source=files", f"--config.rl.prompt_files=('{missing}',)"))
    assert f"rl.prompt_files: {missing}: no such file" in line
    assert not (tmp_path / "run" / "sft").exists()


def test_a_prompt_template_that_does_not_exist(tmp_path: Path) -> None:
    line = _the_error_line(_main("--config=configs/tiny.py", f"--workdir={tmp_path}",
                                 "--config.rl.prompt_template=boxd"))
    assert "rl.prompt_template: 'boxd'" in line


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    result = _main("--config=configs/tiny.py", f"--workdir={tmp_path}",
                   "--config.rl.prompt_template=boxd", "--verbose")
    assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.mark.parametrize(("key", "value", "message"), [
    ("model.hf_path", "/nope/model", "model.hf_path: /nope/model: no such folder"),
    ("data.tokenizer", "/nope/tok", "data.tokenizer: /nope/tok: no such folder"),
    ("rl.init_hf_path", "/nope/hf", "rl.init_hf_path: /nope/hf: no such folder"),
])
def test_check_inputs_names_each_missing_path(key: str, value: str, message: str) -> None:
    config = config_lib.apply_overrides(config_lib.base_config(), [f"{key}='{value}'"])
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.check_inputs(config)


def test_check_inputs_leaves_remote_paths_to_their_storage() -> None:
    config = config_lib.apply_overrides(config_lib.base_config(),
                                        ["model.hf_path='gs://bucket/model'"])
    config_lib.check_inputs(config)


def test_kernels_load_from_any_working_directory(tmp_path: Path) -> None:
    """`python -m sftrl...` outside the repo root used to fail at the first decode step."""
    result = subprocess.run(
        [sys.executable, "-c", "from sftrl.kernels import decode_attention; "
         "print(decode_attention.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert Path(result.stdout.strip()) == ROOT / "sftrl" / "kernels" / "decode_attention.py"


def test_one_line_folds_a_message() -> None:
    assert errors.one_line(ValueError("a\n  b\n")) == "sftrl: error: a b"
    missing = FileNotFoundError(2, "No such file or directory", "/x/y")
    assert errors.one_line(missing) == "sftrl: error: /x/y: No such file or directory"
    assert errors.is_user_error(errors.UserError("x")) and not errors.is_user_error(KeyError())


# --- one stage per run directory --------------------------------------------------------------

def test_rl_after_sft_in_one_workdir_starts_from_it_and_writes_beside_it(tmp_path: Path) -> None:
    common.claim_run_dir(tmp_path, "sft")
    where, config = rl_run_dir(config_lib.base_config(), tmp_path)
    assert where == tmp_path / "rl"
    assert config.rl.init_workdir == str(tmp_path)
    common.claim_run_dir(where, "rl")
    assert common.run_stage(tmp_path) == "sft" and common.run_stage(where) == "rl"


def test_rl_starts_from_a_sibling_sft_run(tmp_path: Path) -> None:
    common.claim_run_dir(tmp_path / "sft", "sft")
    where, config = rl_run_dir(config_lib.base_config(), tmp_path / "rl")
    assert where == tmp_path / "rl" and config.rl.init_workdir == str(tmp_path / "sft")


def test_an_explicit_start_is_kept(tmp_path: Path) -> None:
    common.claim_run_dir(tmp_path, "sft")
    base = config_lib.apply_overrides(config_lib.base_config(), ["rl.init_hf_path='/m'"])
    _, config = rl_run_dir(base, tmp_path)
    assert config.rl.init_workdir == "" and config.rl.init_hf_path == "/m"


def test_sft_refuses_a_folder_that_holds_an_rl_run(tmp_path: Path) -> None:
    common.claim_run_dir(tmp_path, "rl")
    with pytest.raises(errors.UserError, match="holds a rl run's checkpoints"):
        common.claim_run_dir(tmp_path, "sft")


# --- progress lines -------------------------------------------------------------------------

def test_progress_line_has_rate_and_eta() -> None:
    now = [100.0]
    progress = ProgressLog("sft", total_steps=300, start_step=100, clock=lambda: now[0])
    now[0] += 50.0  # 20 steps in 50 s: 2.5 s a step, 180 steps left
    line = progress.line(120, {"loss": 0.5})
    assert line.startswith("sft step 120/300 (40%) loss 0.5 | 0.4 step/s")
    assert line.endswith("elapsed 50s, ETA 7m30s")
    assert format_duration(3723) == "1h02m03s"


@pytest.mark.parametrize(("key", "value"), [("sft.evals", "('passk',)"),
                                            ("rl.evals", "('heldout',)")])
def test_an_evaluator_the_trainer_does_not_run_is_refused(key: str, value: str) -> None:
    """It used to pass validation and then silently do nothing."""
    config = config_lib.apply_overrides(config_lib.base_config(), [f"{key}={value}"])
    with pytest.raises(config_lib.ConfigError, match=f"{key}: unknown evaluator"):
        config_lib.validate(config, num_devices=1)


def test_evaluating_a_checkpoint_that_is_not_there_is_one_line(tmp_path: Path, monkeypatch) -> None:
    """`--stage=eval --config.eval.checkpoints=600` before step 600 is saved printed a traceback."""
    from sftrl.stages import eval as eval_stage

    class Saved:
        def __init__(self, directory, **_):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *_):
            return False

        def all_steps(self):
            return [200, 400]

    monkeypatch.setattr(eval_stage.state_lib, "Checkpointer", Saved)
    (tmp_path / "checkpoints").mkdir()
    config = config_lib.apply_overrides(config_lib.base_config(),
                                        ["eval.checkpoints='400,600'"])
    with pytest.raises(errors.UserError) as raised:
        eval_stage.steps_to_evaluate(config, tmp_path)
    assert errors.one_line(raised.value) == (
        f"sftrl: error: eval.checkpoints: steps [600] not in {tmp_path / 'checkpoints'} "
        "(has [200, 400])")
    config = config_lib.apply_overrides(config_lib.base_config(), ["eval.checkpoints='400'"])
    assert eval_stage.steps_to_evaluate(config, tmp_path) == [400]


def test_evaluating_rl_checkpoints_without_their_sft_checkpoint_is_refused_at_start() -> None:
    """`--stage=eval --config.eval.stage=rl` without eval.sft_checkpoint ran the model load and
    then printed a ValueError traceback."""
    config = config_lib.apply_overrides(config_lib.base_config(),
                                        ["stage='eval'", "eval.stage='rl'"])
    with pytest.raises(config_lib.ConfigError, match=r"^eval\.sft_checkpoint: "):
        config_lib.validate(config, num_devices=1)
    config = config_lib.apply_overrides(config, ["eval.sft_checkpoint='p10-step2000'"])
    config_lib.validate(config, num_devices=1)
