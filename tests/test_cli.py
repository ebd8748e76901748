import subprocess
import sys

import pytest

import cen_lab
from cen_lab.cli import main


def test_module_help_lists_the_commands():
    proc = subprocess.run([sys.executable, "-m", "cen_lab", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for command in ("train", "config", "data", "report"):
        assert command in proc.stdout


def test_tiny_cli_run(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--preset", "tiny", "--set", "train.steps=4", "--set", "train.lam=1e-3", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    run = cen_lab.load_run(out)
    assert run.complete and run.config.train.steps == 4 and run.config.train.lam == 1e-3
    assert "status complete" in capsys.readouterr().out


def test_bad_set_is_a_clear_error(capsys):
    assert main(["config", "--set", "train.lamda=1"]) == 2
    assert "unknown config key 'train.lamda'" in capsys.readouterr().err
    assert main(["config", "--set", "train.lam"]) == 2
    assert "--set expects KEY=VALUE" in capsys.readouterr().err


def test_existing_run_is_refused_by_the_cli(tmp_path, capsys):
    args = ["train", "--preset", "tiny", "--set", "train.steps=2", "--out", str(tmp_path / "r"), "--no-progress"]
    assert main(args) == 0
    assert main(args) == 2
    err = capsys.readouterr().err
    # the advice names the command line's flags, not Python's keywords
    assert "already holds this run; pass --resume to continue or reuse it, or --overwrite to start again" in err
    assert "=True" not in err
    with pytest.raises(cen_lab.RunExistsError, match="pass resume=True to continue or reuse it, or overwrite=True"):
        cen_lab.train(cen_lab.ExperimentConfig.preset("tiny").override({"train.steps": 2}), tmp_path / "r",
                      progress=False)


def test_report_runs_the_notebooks_and_reuses_the_run(tmp_path):
    args = ["report", "--preset", "tiny", "--notebooks", "quickstart", "--runs-dir", str(tmp_path / "runs"),
            "--out", str(tmp_path / "reports"), "--no-progress", "--quiet"]
    assert main(args) == 0
    out = tmp_path / "reports" / "tiny"
    assert (out / "index.html").is_file() and (out / "quickstart.html").is_file()
    assert (out / "figures" / "quickstart" / "gamma_trajectories.png").stat().st_size > 1000
    started = cen_lab.load_run(tmp_path / "runs" / "tiny").manifest["started_at"]
    assert main(args) == 0  # the complete run is reused, not retrained
    assert cen_lab.load_run(tmp_path / "runs" / "tiny").manifest["started_at"] == started


def test_report_with_a_bad_parameter_exits_non_zero(tmp_path, capsys):
    rc = main(["report", "--preset", "tiny", "--notebooks", "quickstart", "--param", "quickstart.presett=tiny",
               "--out", str(tmp_path), "--quiet"])
    assert rc == 1
    assert "unknown parameter 'presett'; did you mean 'preset'" in capsys.readouterr().err


def test_data_check_confirms_the_committed_datasets(capsys):
    assert main(["data", "check"]) == 0
    assert capsys.readouterr().out.count("matches") == 2


def test_resume_continues_the_runs_own_config_and_refuses_only_a_conflicting_set(tmp_path, capsys):
    out = str(tmp_path / "demo")
    assert main(["train", "--preset", "tiny", "--set", "train.lam=0.01", "--out", out, "--stop-at", "6",
                 "--no-progress"]) == 0
    # no --preset and no --set: the stored config (tiny, lam 0.01), not the default preset's
    assert main(["train", "--out", out, "--resume", "--no-progress"]) == 0
    assert "status complete, 12/12 steps" in capsys.readouterr().out
    run = cen_lab.load_run(out)
    assert run.config.train.lam == 0.01 and run.config.name == "tiny"
    # repeating a stored value is fine; changing one is refused, naming both values, and nothing is written
    assert main(["train", "--out", out, "--resume", "--set", "train.lam=0.01", "--no-progress"]) == 0
    before = (tmp_path / "demo" / "manifest.json").read_text()
    assert main(["train", "--out", out, "--resume", "--set", "train.lam=0.02", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--set train.lam=0.02 conflicts with the run in" in err and "which has train.lam=0.01" in err
    assert "--overwrite" not in err and (tmp_path / "demo" / "manifest.json").read_text() == before


def test_every_command_help_opens_with_its_summary(capsys):
    from cen_lab.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    assert len(sub.choices) >= 16 and "bench-long" in sub.choices
    for choice in sub._choices_actions:
        assert sub.choices[choice.dest].description.lower().startswith(choice.help.lower()[:20]), choice.dest
        assert all(a.help for a in sub.choices[choice.dest]._actions), choice.dest  # every argument explained
    with pytest.raises(SystemExit) as exit:
        main(["data", "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert "Regenerate or check the canonical datasets in data/." in out and "check: verify the files" in out
