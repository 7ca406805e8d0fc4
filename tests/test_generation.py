"""Every combination renders, identically with both engines, into a clean tree (no installs)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
from rendering import (
    COMBINATIONS,
    QUESTIONS,
    Combination,
    load_hook,
    render_cookiecutter,
    render_copier,
)

post_gen = load_hook("post_gen_project")

# Only copier writes this (cookiecutter's name for it renders empty, so it is skipped).
COPIER_ANSWERS_FILE = ".copier-answers.yml"
# The post-generation hook writes a random signing secret here, so it differs on every render.
SECRET_FILE = post_gen.ENV_FILE
SECRET = re.compile(rf"^{post_gen.SECRET_SETTING}=(\S+)$", re.MULTILINE)
# token_urlsafe(48): 64 characters; a secret under 32 would be refused in production.
MIN_SECRET_LENGTH = 32

LEFTOVER_TAGS = re.compile(r"\{\{|\{%|cookiecutter\.\w")
# GitHub Actions expressions are meant to survive rendering, in workflows only.
GITHUB_EXPRESSION = "${{"
WORKFLOWS = ".github/workflows/"


def files(root: Path) -> dict[str, bytes]:
    """Every file under root by relative path. Folders are left out: copier does not create
    empty ones, cookiecutter does, and an empty folder changes nothing in a project."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() or path.is_symlink()
    }


def text(content: bytes) -> str | None:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        return None


class Rendered(NamedTuple):
    combination: Combination
    by_cookiecutter: Path
    by_copier: Path


@pytest.fixture(scope="module")
def render_once(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Combination], Rendered]:
    """Render each combination once per test process: the checks below only read the trees."""
    cache: dict[str, Rendered] = {}

    def render(combination: Combination) -> Rendered:
        if combination.id not in cache:
            base = tmp_path_factory.mktemp(combination.id)
            cache[combination.id] = Rendered(
                combination,
                render_cookiecutter(combination.answers, base / "cookiecutter"),
                render_copier(combination.answers, base / "copier"),
            )
        return cache[combination.id]

    return render


@pytest.fixture(params=COMBINATIONS, ids=lambda combination: combination.id)
def rendered(
    request: pytest.FixtureRequest, render_once: Callable[[Combination], Rendered]
) -> Rendered:
    """The combination rendered by cookiecutter and by copier."""
    return render_once(request.param)


def test_both_engines_render_identical_trees(rendered: Rendered) -> None:
    by_cookiecutter, by_copier = files(rendered.by_cookiecutter), files(rendered.by_copier)
    assert COPIER_ANSWERS_FILE in by_copier, "copier update needs the answers file"
    del by_copier[COPIER_ANSWERS_FILE]
    # Random on every render; test_an_authenticating_project_gets_a_secret checks it.
    by_cookiecutter.pop(SECRET_FILE, None)
    by_copier.pop(SECRET_FILE, None)

    assert sorted(by_cookiecutter) == sorted(by_copier)
    differing = [name for name in by_cookiecutter if by_cookiecutter[name] != by_copier[name]]
    assert differing == []


def test_no_template_syntax_is_left(rendered: Rendered) -> None:
    leftovers = []
    for root in (rendered.by_cookiecutter, rendered.by_copier):
        for name, content in files(root).items():
            body = text(content)
            if body is None:
                continue
            if name.startswith(WORKFLOWS):
                body = body.replace(GITHUB_EXPRESSION, "")
            leftovers += [
                f"{root.parent.name}: {name}: {match.group()!r} at offset {match.start()}"
                for match in LEFTOVER_TAGS.finditer(body)
            ]
    assert leftovers == []


def test_an_authenticating_project_gets_a_secret(rendered: Rendered) -> None:
    auth = rendered.combination.answers.get("auth", "none")
    secrets = []
    for root in (rendered.by_cookiecutter, rendered.by_copier):
        env_file = root / SECRET_FILE
        if auth == "none":
            assert not env_file.exists(), "no auth, no secret"
            continue
        (secret,) = SECRET.findall(env_file.read_text("utf-8"))
        assert len(secret) >= MIN_SECRET_LENGTH
        secrets.append(secret)
    if secrets:
        assert secrets[0] != secrets[1], "each project gets its own random secret"


def test_the_hooks_answers_file_is_gone(rendered: Rendered) -> None:
    for root in (rendered.by_cookiecutter, rendered.by_copier):
        assert not (root / post_gen.ANSWERS_FILE).exists()


def package_name(project: Path) -> str:
    (package,) = [path.name for path in (project / "src").iterdir() if path.is_dir()]
    return package


def test_exactly_the_unchosen_features_files_are_pruned(rendered: Rendered) -> None:
    project = rendered.by_cookiecutter
    answers = {**QUESTIONS, **rendered.combination.answers, "package_name": package_name(project)}
    wrong = []
    for feature, paths in post_gen.MANIFEST.items():
        chosen = post_gen.is_chosen(feature, answers)
        for path in paths:
            relative = path.format(package_name=answers["package_name"])
            if (project / relative).exists() != chosen:
                state = "missing, though chosen" if chosen else "present, though not chosen"
                wrong.append(f"{feature}: {relative} is {state}")
    assert wrong == []


def test_every_python_file_compiles(rendered: Rendered) -> None:
    project = rendered.by_cookiecutter
    for path in sorted(project.rglob("*.py")):
        # compile() raises SyntaxError naming the file and line.
        compile(path.read_text("utf-8"), str(path), "exec")


INVALID_ANSWERS = [
    pytest.param("package_name", "class", id="package-keyword"),
    pytest.param("project_slug", "bad slug", id="slug-with-space"),
]


@pytest.mark.parametrize(("question", "answer"), INVALID_ANSWERS)
def test_cookiecutter_refuses_an_invalid_answer_and_leaves_nothing(
    question: str, answer: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    output_dir = tmp_path / "output"
    output_dir.mkdir()
    with pytest.raises(Exception) as failure:  # noqa: PT011 - the engine's own exception type
        render_cookiecutter({question: answer}, output_dir)
    # The hook runs as a child process, whose stderr pytest captures at the descriptor level.
    message = str(failure.value) + capfd.readouterr().err
    assert f"{question} {answer!r}" in message
    assert list(output_dir.iterdir()) == []


@pytest.mark.parametrize(("question", "answer"), INVALID_ANSWERS)
def test_copier_refuses_an_invalid_answer_and_leaves_nothing(
    question: str, answer: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "project"
    with pytest.raises(Exception) as failure:  # noqa: PT011 - the engine's own exception type
        render_copier({question: answer}, dest)
    message = str(failure.value) + capfd.readouterr().err
    assert f"{question} {answer!r}" in message
    assert not dest.exists()
