"""tools/parse_options.sh, tools/log.sh and tools/recipe_helpers.sh, driven through small bash scripts."""

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


DRIVER = """# options shared by several recipes, declared once here
shared_opt=1       # a shared option
stage=0            # first stage to run
. {tools}/parse_options.sh
. {tools}/log.sh
"""

OUTER = """#!/usr/bin/env bash
set -euo pipefail
corpus=abc         # the recipe's own option
help_message="Usage: outer.sh [options]"
. {driver}
echo "corpus=$corpus"
echo "shared_opt=$shared_opt"
echo "stage=$stage"
"""


@pytest.fixture(scope="module")
def outer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recipe that declares its own options and sources a shared driver, which declares
    the shared ones and sources parse_options.sh (as recipes/vctk/run.sh does)."""
    d = tmp_path_factory.mktemp("chain")
    (d / "driver.sh").write_text(DRIVER.format(tools=REPO / "tools"))
    path = d / "outer.sh"
    path.write_text(OUTER.format(driver=d / "driver.sh"))
    path.chmod(0o755)
    return path


def test_options_of_a_sourced_driver_and_its_caller(outer: Path) -> None:
    r = run(outer, "--shared-opt", "5", "--corpus=x", "--stage", "2")
    assert r.returncode == 0, r.stderr
    assert values(r.stdout) == {"corpus": "x", "shared_opt": "5", "stage": "2"}
    r = run(outer, "--help")
    assert r.returncode == 0
    lines = [line.split() for line in r.stdout.splitlines() if line.startswith("  --")]
    # the caller's options first, then the driver's, each with its comment
    assert [words[0] for words in lines] == ["--corpus", "--shared-opt", "--stage"]
    assert "the recipe's own option" in r.stdout and "a shared option" in r.stdout
    r = run(outer, "--nope", "1")
    assert r.returncode == 1
    assert "outer.sh: error: unknown option '--nope'. Valid options: --corpus --shared-opt --stage" in r.stderr


HELPERS = """#!/usr/bin/env bash
set -euo pipefail
. {tools}/log.sh
. {tools}/recipe_helpers.sh
cd "$1"
once a/.done echo ran-once
once_with "opts $2" b/.done echo ran-with
count=$3
require_uint count
mode=$4
require_one_of mode fast slow
once c/.done false
"""


def test_recipe_helpers(tmp_path: Path) -> None:
    """once / once_with (.done markers), require_uint, require_one_of."""
    script = tmp_path / "helpers.sh"
    script.write_text(HELPERS.format(tools=REPO / "tools"))
    script.chmod(0o755)
    r = run(script, str(tmp_path), "x", "3", "fast")
    assert r.returncode == 1  # the last `once`: its command fails, so no marker
    assert r.stdout.splitlines() == ["ran-once", "ran-with"]
    assert (tmp_path / "a" / ".done").is_file() and (tmp_path / "b" / ".done").read_text() == "opts x\n"
    assert not (tmp_path / "c" / ".done").exists()
    r = run(script, str(tmp_path), "x", "3", "fast")
    assert r.stdout == "" and "a/.done exists: skipping" in r.stderr and "b/.done exists: skipping" in r.stderr
    r = run(script, str(tmp_path), "y", "3", "fast")
    assert r.returncode == 1 and "b/.done records 'opts x', not 'opts y': remove b" in r.stderr
    r = run(script, str(tmp_path), "x", "-3", "fast")
    assert r.returncode == 1 and "--count must be a non-negative integer, not '-3'" in r.stderr
    r = run(script, str(tmp_path), "x", "3", "quick")
    assert r.returncode == 1 and "--mode must be one of: fast slow; not 'quick'" in r.stderr
