import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from winnow.flows.cli import build_parser, main
from winnow.tasks import lake


def test_help_on_every_command(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"run", "sql", "scorers"} <= set(commands)
    for name in [None, *commands]:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"] if name else ["--help"])
        assert exit_.value.code == 0
        assert "usage: winnow" in capsys.readouterr().out


def test_bad_arguments_exit_with_a_message(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--rate", "1.5"])
    assert "must lie in [0, 1)" in capsys.readouterr().err
    assert main(["run", "--scorers", "loss,bogus"]) == 2
    assert "unknown scorer 'bogus'" in capsys.readouterr().err


def test_sql_formats(fresh_home, capsys):
    lake.write("metrics", pd.DataFrame({"scorer": ["loss", "random"], "value": [0.99, 0.5]}))
    assert main(["sql", "SELECT scorer, value FROM metrics ORDER BY value DESC", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"scorer": "loss", "value": 0.99}, {"scorer": "random", "value": 0.5}]
    assert main(["sql", "SELECT scorer FROM metrics ORDER BY 1", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["scorer", "loss", "random"]
    assert main(["sql", "SELECT scorer FROM metrics"]) == 0
    assert "random" in capsys.readouterr().out
    assert main(["sql", "SELECT * FROM nowhere"]) == 2
    assert "nowhere" in capsys.readouterr().err


@pytest.mark.slow
def test_winnow_run_prints_the_summary_table(tmp_path):
    """The README's main command, as a user runs it (its own ephemeral Prefect server)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(WINNOW_HOME=str(tmp_path), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    cmd = [sys.executable, "-m", "winnow.flows.cli", "run", "--dataset", "digits", "--noise", "symmetric",
           "--rate", "0.2", "--epochs", "5", "--scorers", "loss,random"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "AUROC" in out.stdout and "acc. after soft-all" in out.stdout  # the default remedy
    assert "MLflow run id:" in out.stdout
    assert (tmp_path / "mlflow.db").exists() and (tmp_path / "lake" / "scores").is_dir()
