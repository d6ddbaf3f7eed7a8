"""tools/parse_options.sh and tools/log.sh, driven through a small bash script."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """#!/usr/bin/env bash
set -euo pipefail
# a header comment that belongs to no option

# first stage to run
stage=0
foo_bar=abc        # the foo bar
use_gpu=false      # a boolean
help_message="Usage: demo.sh [options] <arg>..."
. {tools}/parse_options.sh
. {tools}/log.sh
echo "stage=$stage"
echo "foo_bar=$foo_bar"
echo "use_gpu=$use_gpu"
echo "nargs=$#"
for a in "$@"; do echo "arg=$a"; done
log "finished"
"""


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("po") / "demo.sh"
    path.write_text(SCRIPT.format(tools=REPO / "tools"))
    path.chmod(0o755)
    return path


def run(script: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(script), *args], check=False, capture_output=True, text=True, timeout=30,
                          env=None if env is None else {**os.environ, **env})


def values(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line and not line.startswith("arg="))


def test_defaults_and_space_separated_value(script: Path) -> None:
    r = run(script)
    assert r.returncode == 0, r.stderr
    assert values(r.stdout) == {"stage": "0", "foo_bar": "abc", "use_gpu": "false", "nargs": "0"}
    r = run(script, "--foo-bar", "x y", "--stage", "3")
    assert r.returncode == 0, r.stderr
    assert values(r.stdout)["foo_bar"] == "x y"
    assert values(r.stdout)["stage"] == "3"


def test_equals_form_keeps_later_equals_signs(script: Path) -> None:
    r = run(script, "--foo-bar=a=b", "--use-gpu=true")
    assert r.returncode == 0, r.stderr
    assert values(r.stdout)["foo_bar"] == "a=b"
    assert values(r.stdout)["use_gpu"] == "true"


def test_unknown_option_lists_valid_ones(script: Path) -> None:
    r = run(script, "--stage", "1", "--nope", "2")
    assert r.returncode != 0
    assert "--nope" in r.stderr
    for opt in ("--stage", "--foo-bar", "--use-gpu"):
        assert opt in r.stderr
    # neither help_message nor environment variables are options
    assert "--help-message" not in r.stderr
    assert "stage=" not in r.stdout


def test_environment_variables_are_not_options(script: Path) -> None:
    r = run(script, "--home", "/tmp")
    assert r.returncode != 0
    assert "unknown option '--home'" in r.stderr


def test_option_also_exported_by_the_environment_still_works(script: Path) -> None:
    # an exported variable of the same name must not hide the declared option
    r = run(script, "--foo-bar", "x", env={"foo_bar": "from-env"})
    assert r.returncode == 0, r.stderr
    assert values(r.stdout)["foo_bar"] == "x"
    r = run(script, env={"foo_bar": "from-env"})
    assert values(r.stdout)["foo_bar"] == "abc"  # the script's default wins, as in bash


def test_help_prints_options_values_and_comments(script: Path) -> None:
    for flag in ("--help", "-h"):
        r = run(script, "--stage", "5", flag)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("Usage: demo.sh [options] <arg>...")
        lines = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith("  --")}
        assert list(lines) == ["--stage", "--foo-bar", "--use-gpu"]  # declaration order
        assert "'5'" in lines["--stage"] and "first stage to run" in lines["--stage"]
        assert "'abc'" in lines["--foo-bar"] and "the foo bar" in lines["--foo-bar"]
        assert "stage=" not in r.stdout  # exited before the script body


def test_missing_value_is_an_error(script: Path) -> None:
    r = run(script, "--stage")
    assert r.returncode != 0
    assert "--stage needs a value" in r.stderr
    r = run(script, "--stage", "--foo-bar", "x")
    assert r.returncode != 0
    assert "--stage needs a value" in r.stderr


def test_boolean_options_take_true_or_false(script: Path) -> None:
    r = run(script, "--use-gpu", "yes")
    assert r.returncode != 0
    assert "true or false" in r.stderr


def test_positional_arguments_stop_parsing(script: Path) -> None:
    r = run(script, "--stage", "2", "first", "--foo-bar", "x")
    assert r.returncode == 0, r.stderr
    v = values(r.stdout)
    assert v["stage"] == "2" and v["foo_bar"] == "abc" and v["nargs"] == "3"
    assert [line[4:] for line in r.stdout.splitlines() if line.startswith("arg=")] == ["first", "--foo-bar", "x"]
    r = run(script, "--", "--stage", "9")
    assert r.returncode == 0, r.stderr
    assert values(r.stdout)["stage"] == "0" and values(r.stdout)["nargs"] == "2"


def test_log_prints_time_and_script_to_stderr(script: Path) -> None:
    r = run(script)
    assert r.returncode == 0
    line = r.stderr.strip().splitlines()[-1]
    assert line.endswith("finished")
    assert "(demo.sh:" in line
    assert line[:4].isdigit() and line[4] == "-"  # starts with the date
    assert "finished" not in r.stdout
