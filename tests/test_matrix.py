"""Every combination, installed into its own fresh environment from its own pyproject, passes its
own lint, type check and tests. A shared environment would hide a dependency that one combination
forgot, so each one pays for its own install (uv's shared cache keeps that cheap)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from rendering import (
    COMBINATIONS,
    DEFAULT,
    Combination,
    CommandFailed,
    install,
    render_cookiecutter,
    render_cookiecutter_typed,
    run,
)

# The generated project's own checks, as its README and CI run them; each tool is configured
# in the generated pyproject.toml (mypy's strict mode and files included).
CHECKS: list[list[str]] = [
    ["ruff", "check", "."],
    ["ruff", "format", "--check", "."],
    ["mypy"],
    ["pytest", "-q", "-p", "no:cacheprovider"],
]


def project_environment(bin_dir: Path) -> dict[str, str]:
    """The environment a developer has after activating the project's virtualenv."""
    env = {
        name: value
        for name, value in os.environ.items()
        # The template suite's own pytest and xdist settings must not leak into the project's.
        if not name.startswith(("PYTEST_", "PYTHON")) and name != "VIRTUAL_ENV"
    }
    env["VIRTUAL_ENV"] = str(bin_dir.parent)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def failed_checks(project: Path, bin_dir: Path, checks: list[list[str]]) -> list[str]:
    """Run every check, even after one fails, and return the failures' output."""
    env = project_environment(bin_dir)
    failures = []
    for tool, *args in checks:
        try:
            run([bin_dir / tool, *args], cwd=project, env=env)
        except CommandFailed as failure:
            failures.append(str(failure))
    return failures


@pytest.mark.matrix
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("combination", COMBINATIONS, ids=lambda combination: combination.id)
def test_combination_passes_its_own_checks(combination: Combination, tmp_path: Path) -> None:
    project = render_cookiecutter(combination.answers, tmp_path)
    bin_dir = install(project)
    failures = failed_checks(project, bin_dir, CHECKS)
    assert not failures, "\n\n".join(failures)


def git_ignores(project: Path, path: str, env: dict[str, str]) -> bool:
    result = subprocess.run(["git", "check-ignore", "-q", path], cwd=project, env=env, check=False)
    return result.returncode == 0


@pytest.mark.matrix
@pytest.mark.timeout(1200)
def test_pre_commit_passes_on_the_default_project(tmp_path: Path) -> None:
    project = render_cookiecutter(DEFAULT.answers, tmp_path)
    assert (project / ".pre-commit-config.yaml").is_file(), (
        "the generated project has no .pre-commit-config.yaml"
    )
    bin_dir = install(project)
    env = project_environment(bin_dir)
    run(["git", "init", "-q"], cwd=project, env=env)
    # Otherwise `git add -A` would hand the whole virtualenv to the hooks.
    assert git_ignores(project, ".venv/", env), "the generated .gitignore must ignore .venv/"
    run(["git", "add", "-A"], cwd=project, env=env)
    failures = failed_checks(project, bin_dir, [["pre-commit", "run", "--all-files"]])
    assert not failures, "\n\n".join(failures)


# Every kind of answer that once broke a rendered file, in one: quotes of both kinds (which flip
# ruff's quote style), backslashes, braces, HTML, a fullwidth letter (ruff's RUF001),
# accents, CJK and an emoji made of several code points.
HOSTILE_TEXT = 'Bob "Quote" O\'Brien \\ {x} }} %} #} </script><!-- Ｆｕｌｌ Café 日本語 👩\u200d💻'


@pytest.mark.matrix
@pytest.mark.timeout(1200)
def test_a_project_with_hostile_answers_passes_its_own_checks(tmp_path: Path) -> None:
    # The smallest combination (its checks are the quickest): the answers reach the same files
    # in every combination.
    answers = {
        "use_rooms": False,
        "use_redis": False,
        "use_sse": False,
        "use_heartbeats": False,
        "auth": "none",
        "project_name": HOSTILE_TEXT,
        "project_slug": "hostile-answers",
        "description": HOSTILE_TEXT,
        "author": HOSTILE_TEXT,
    }
    project = render_cookiecutter_typed(answers, tmp_path)
    bin_dir = install(project)
    failures = failed_checks(project, bin_dir, CHECKS)
    assert not failures, "\n\n".join(failures)
