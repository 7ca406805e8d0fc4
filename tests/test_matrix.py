"""Every combination, installed into its own fresh environment from its own pyproject, passes its
own lint, type check and tests. A shared environment would hide a dependency that one combination
forgot, so each one pays for its own install (uv's shared cache keeps that cheap)."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from rendering import (
    CHECKS,
    COMBINATIONS,
    DEFAULT,
    FAST_CHECKS,
    FEATURES,
    SLOW_CHECKS,
    Combination,
    assert_checks_pass,
    install,
    project_environment,
    render_cookiecutter,
    render_cookiecutter_typed,
    run,
    uv_environment,
    uv_executable,
)


@pytest.mark.matrix
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("combination", COMBINATIONS, ids=lambda combination: combination.id)
def test_combination_passes_its_own_checks(combination: Combination, tmp_path: Path) -> None:
    project = render_cookiecutter(combination.answers, tmp_path)
    assert_checks_pass(project, install(project), FAST_CHECKS)


def with_answers(**answers: object) -> Combination:
    return next(c for c in COMBINATIONS if all(c.answers[k] == v for k, v in answers.items()))


ALL_ON = {"use_rooms": True, "use_redis": True, "use_sse": True, "use_heartbeats": True}
ALL_OFF = dict.fromkeys(ALL_ON, False)
SLOW_COVER = [
    DEFAULT,
    with_answers(**ALL_ON, auth="query_token"),
    with_answers(**ALL_ON, auth="cookie"),
    with_answers(**ALL_OFF, auth="none"),
    with_answers(**ALL_OFF | {"use_redis": True}, auth="cookie"),
]


def test_slow_cover_gives_every_answer_at_least_once() -> None:
    for question, answers in FEATURES.items():
        covered = {combination.answers[question] for combination in SLOW_COVER}
        assert covered == set(answers), f"{question}: {set(answers) - covered} never run slow"


@pytest.mark.matrix
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("combination", SLOW_COVER, ids=lambda combination: combination.id)
def test_combination_passes_its_slow_tests(combination: Combination, tmp_path: Path) -> None:
    project = render_cookiecutter(combination.answers, tmp_path)
    assert_checks_pass(project, install(project), SLOW_CHECKS)


# The oldest versions pyproject.toml allows, in the combinations with every feature on and every
# feature off, across the auth modes: a lower bound that no longer holds fails here.
LOWEST_BOUNDS = [
    with_answers(**ALL_ON, auth="query_token"),
    with_answers(**ALL_OFF, auth="none"),
    with_answers(**ALL_OFF, auth="cookie"),
]


def lower_bounds(project: Path) -> dict[str, Version]:
    """Each dependency (and dev tool) pyproject.toml names with a lower bound, and that bound."""
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    requirements = [
        *pyproject["project"]["dependencies"],
        *pyproject["dependency-groups"]["dev"],
    ]
    bounds = {}
    for line in requirements:
        requirement = Requirement(line)
        for specifier in requirement.specifier:
            if specifier.operator in (">=", "=="):
                bounds[requirement.name.lower()] = Version(specifier.version)
    return bounds


def installed_versions(project: Path) -> dict[str, Version]:
    listing = run(
        [uv_executable(), "pip", "list", "--format", "json", "--python", ".venv/bin/python"],
        cwd=project,
        env=uv_environment(),
    )
    return {item["name"].lower(): Version(item["version"]) for item in json.loads(listing)}


@pytest.mark.matrix
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("combination", LOWEST_BOUNDS, ids=lambda combination: combination.id)
def test_lowest_bounds_pass_their_own_checks(combination: Combination, tmp_path: Path) -> None:
    project = render_cookiecutter(combination.answers, tmp_path)
    bin_dir = install(project, resolution="lowest-direct")
    installed = installed_versions(project)
    not_lowest = {
        name: f"{installed.get(name)} installed, {bound} is the bound"
        for name, bound in lower_bounds(project).items()
        if installed.get(name) != bound
    }
    assert not not_lowest, f"not installed at the lower bound: {not_lowest}"
    # Not the slow tests: the header fuzz finds that the oldest uvicorn and websockets allowed
    # answer some malformed upgrades with a 500 or nothing, which the newest answer with a
    # 400 (see the README); the floors do not yet promise that, only a working service.
    assert_checks_pass(project, bin_dir, FAST_CHECKS)


@pytest.mark.matrix
@pytest.mark.timeout(1200)
def test_uv_sync_then_uv_run_pytest_then_uv_sync_locked(tmp_path: Path) -> None:
    """What the generated README's Install section says, in a fresh project."""
    project = render_cookiecutter(DEFAULT.answers, tmp_path)
    assert not (project / "uv.lock").exists(), "generation is offline: no lock is rendered"
    env = uv_environment()
    uv = uv_executable()
    run([uv, "sync", "--python", "python3"], cwd=project, env=env)
    assert (project / "uv.lock").is_file(), "uv sync writes the lock the README says to commit"
    run([uv, "run", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project, env=env)
    run([uv, "sync", "--locked"], cwd=project, env=env)


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
    assert_checks_pass(project, bin_dir, [["pre-commit", "run", "--all-files"]])


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
    assert_checks_pass(project, install(project), CHECKS)
