"""Every combination renders, identically with both engines, into a clean tree (no installs)."""

from __future__ import annotations

import json
import py_compile
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from markdown_it import MarkdownIt
from rendering import (
    COMBINATIONS,
    QUESTIONS,
    TEMPLATE,
    Combination,
    CommandFailed,
    load_hook,
    package_of,
    render_cookiecutter,
    render_cookiecutter_typed,
    render_copier,
)

post_gen = load_hook("post_gen_project")

DEMO_PAGE = "src/{{cookiecutter.package_name}}/static/index.html"

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


def test_exactly_the_unchosen_features_files_are_pruned(rendered: Rendered) -> None:
    project = rendered.by_cookiecutter
    answers = {**QUESTIONS, **rendered.combination.answers, "package_name": package_of(project)}
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
    pytest.param("project_name", "Two\nLines", id="name-with-a-newline"),
    pytest.param("description", "A\ttab", id="description-with-a-tab"),
    pytest.param("author", "Bell\x07", id="author-with-a-control-character"),
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


# --- free-text answers ---------------------------------------------------------------------

# Answers that break naive templating. Each is given as the project name, the description and
# the author at once; every one must render, identically with both engines, into a project whose
# every file still parses and which carries the answer verbatim.
NASTY_TEXT = [
    pytest.param('Bob "Quote" Service', id="double-quotes"),
    pytest.param("O'Brien's Chat", id="apostrophes"),
    pytest.param("C:\\new\\table \\", id="backslashes"),
    pytest.param("{braces} {0} %s ${HOME} }} %} #} { {", id="braces"),
    pytest.param("Café Crème Brûlée", id="accents"),
    pytest.param("日本語 Chat チャット", id="cjk"),
    pytest.param("Rocket 🚀 Chat 👩‍💻", id="emoji"),
    pytest.param("</script><script>alert(1)</script> <!-- &amp;", id="html"),
    pytest.param('Triple """ and \'\'\' quotes"', id="triple-quotes"),
    pytest.param("Ｆｕｌｌ（ｗｉｄｔｈ） Чат сервис", id="confusables"),
]
NASTY_SLUG = "nasty-chat"


def nasty_answers(text: str) -> dict[str, object]:
    return {
        "project_name": text,
        "project_slug": NASTY_SLUG,
        "description": text,
        "author": text,
    }


def parse_every_file(project: Path) -> None:
    """Compile every .py, parse every .toml, .yml/.yaml and .json: each raises on bad syntax."""
    for path in sorted(project.rglob("*")):
        if ".venv" in path.parts or not path.is_file():
            continue
        if path.suffix == ".py":
            py_compile.compile(str(path), cfile=str(path) + "c-check", doraise=True)
            Path(str(path) + "c-check").unlink()
        elif path.suffix == ".toml":
            tomllib.loads(path.read_text("utf-8"))
        elif path.suffix in (".yml", ".yaml"):
            yaml.safe_load(path.read_text("utf-8"))
        elif path.suffix == ".json":
            json.loads(path.read_text("utf-8"))


def assert_carries_the_answer(project: Path, text: str) -> None:
    """The answer arrives verbatim where it is data, and as plain text where it is markup."""
    pyproject = tomllib.loads((project / "pyproject.toml").read_text("utf-8"))
    assert pyproject["project"]["description"] == text
    assert pyproject["project"]["authors"] == [{"name": text}]
    (package,) = [path for path in (project / "src").iterdir() if path.is_dir()]
    about = json.loads((package / "about.json").read_text("utf-8"))
    assert about == {"name": text, "description": text}
    # The answer is data the service reads, never Python source that ruff would lint or
    # reformat (a quote flips ruff's quote style, a fullwidth letter is RUF001).
    for path in project.rglob("*.py"):
        assert text not in path.read_text("utf-8"), f"{path} holds the answer as source"

    # The demo page is the template's file as it is: it fetches the name (demo.py) and shows
    # it as text, so no answer can add markup or a <script> to it.
    page = (package / "static" / "index.html").read_bytes()
    assert page == (TEMPLATE / "{{cookiecutter.project_slug}}" / DEMO_PAGE).read_bytes()

    title, _, description = (project / "README.md").read_text("utf-8").split("\n")[:3]
    tokens = MarkdownIt("commonmark").parse(f"{title}\n\n{description}\n")
    assert [token.type for token in tokens][:3] == ["heading_open", "inline", "heading_close"]
    raw_html = [
        child.content
        for token in tokens
        for child in [token, *(token.children or [])]
        if child.type in ("html_inline", "html_block")
    ]
    assert raw_html == [], "an answer must not inject HTML into the README"


@pytest.mark.parametrize("text", NASTY_TEXT)
def test_any_printable_answer_renders_a_project_that_parses(text: str, tmp_path: Path) -> None:
    answers = nasty_answers(text)
    by_cookiecutter = render_cookiecutter_typed(answers, tmp_path / "cookiecutter")
    by_copier = render_copier(answers, tmp_path / "copier")

    for project in (by_cookiecutter, by_copier):
        parse_every_file(project)
        assert_carries_the_answer(project, text)
    copier_answers = yaml.safe_load((by_copier / COPIER_ANSWERS_FILE).read_text("utf-8"))
    assert copier_answers["project_name"] == text

    by_cookiecutter_files, by_copier_files = files(by_cookiecutter), files(by_copier)
    del by_copier_files[COPIER_ANSWERS_FILE]
    by_cookiecutter_files.pop(SECRET_FILE, None)
    by_copier_files.pop(SECRET_FILE, None)
    assert by_cookiecutter_files == by_copier_files


JINJA_ANSWERS = [
    pytest.param("{{ 7 * 7 }} {{ cookiecutter.project_slug }}", id="expression"),
    pytest.param("{% if true %}x{% endif %} {% raw %}", id="statement"),
    pytest.param("Chat {# note #}", id="comment"),
]


@pytest.mark.parametrize("text", JINJA_ANSWERS)
def test_an_answer_with_a_jinja_tag_is_refused_by_both_engines(text: str, tmp_path: Path) -> None:
    """Neither engine evaluates a typed answer, but cruft update gives cookiecutter the answers
    back as extra context, which it renders as Jinja: the name would change at the first update
    (`{{ 7 * 7 }}` becomes "49") or fail to render. So both refuse it, before writing anything."""
    with pytest.raises(CommandFailed) as by_cookiecutter:
        render_cookiecutter_typed(nasty_answers(text), tmp_path / "cookiecutter")
    assert f"project_name {text!r} must not hold" in str(by_cookiecutter.value)
    assert list((tmp_path / "cookiecutter").iterdir()) == []

    with pytest.raises(ValueError, match=re.escape(f"project_name {text!r} must not hold")):
        render_copier(nasty_answers(text), tmp_path / "copier")
    assert not (tmp_path / "copier").exists()
