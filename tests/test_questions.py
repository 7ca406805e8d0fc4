"""cookiecutter.json is the single source of truth; copier.yml must ask exactly the same."""

from __future__ import annotations

import json
import keyword
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from jinja2.sandbox import SandboxedEnvironment
from rendering import (
    NOT_TEMPLATE,
    QUESTIONS,
    TEMPLATE,
    CommandFailed,
    load_hook,
    render_cookiecutter,
    render_copier,
    run,
)

COPIER_CONFIG: dict[str, Any] = yaml.safe_load((TEMPLATE / "copier.yml").read_text("utf-8"))

# The hidden computed question that gives copier's templates the `cookiecutter` namespace.
NAMESPACE = "cookiecutter"


def copier_questions() -> dict[str, dict[str, Any]]:
    return {
        name: spec
        for name, spec in COPIER_CONFIG.items()
        if not name.startswith("_") and name != NAMESPACE
    }


# The one slugifier's macro file; cookiecutter gets its macro as a global from slug_extension.py,
# copier imports it by this line.
SLUGIFIER = TEMPLATE / "slug.jinja"
SLUGIFIER_IMPORT = "{% from 'slug.jinja' import slug_of %}"


def as_copier_default(cookiecutter_default: str) -> str:
    """cookiecutter writes `cookiecutter.project_name` where copier writes `project_name`, and
    copier imports the slugifier that cookiecutter's extension hands it."""
    default = cookiecutter_default.replace("cookiecutter.", "")
    return SLUGIFIER_IMPORT + default if "slug_of(" in default else default


def test_same_questions_in_the_same_order() -> None:
    assert list(copier_questions()) == list(QUESTIONS)


@pytest.mark.parametrize("question", list(QUESTIONS))
def test_same_type_default_and_choices(question: str) -> None:
    default = QUESTIONS[question]
    spec = copier_questions()[question]
    if isinstance(default, bool):
        assert spec["type"] == "bool"
        assert spec["default"] is default
    elif isinstance(default, list):
        # cookiecutter's default is the first choice.
        assert spec["type"] == "str"
        assert list(spec["choices"]) == default
        assert spec["default"] == default[0]
    else:
        assert spec["type"] == "str"
        assert spec["default"] == as_copier_default(str(default))
    assert spec.get("help"), f"copier.yml gives {question!r} no help text"


def test_hidden_namespace_names_every_question_by_itself() -> None:
    spec = COPIER_CONFIG[NAMESPACE]
    assert spec["when"] is False, "the namespace must never be asked"
    assert spec["type"] == "yaml"
    pairs = dict(re.findall(r"(\w+)=(\w+)", spec["default"]))
    assert {name: value for name, value in pairs.items() if name in QUESTIONS} == {
        name: name for name in QUESTIONS
    }
    # Both engines know the answers-file name; cookiecutter's is empty so it writes no file.
    assert "__answers" in spec["default"]
    assert "__answers" in json.loads((TEMPLATE / "cookiecutter.json").read_text("utf-8"))


def rendered_names(project: Path) -> tuple[str, str]:
    """The project slug and package name a rendered project ended up with."""
    pyproject = tomllib.loads((project / "pyproject.toml").read_text("utf-8"))
    packages = [path.name for path in (project / "src").iterdir() if path.is_dir()]
    assert len(packages) == 1, packages
    return pyproject["project"]["name"], packages[0]


@pytest.mark.parametrize(
    ("project_name", "slug", "package"),
    [
        ("Café Chat Service", "cafe-chat-service", "cafe_chat_service"),
        ("Realtime Service", "realtime-service", "realtime_service"),
        ("  Hello,  World!! 2 ", "hello-world-2", "hello_world_2"),
        ("Große Übung", "grosse-ubung", "grosse_ubung"),
        ("ÆON Œuvre", "aeon-oeuvre", "aeon_oeuvre"),
    ],
)
def test_slug_derivation_is_the_same_in_both_engines(
    tmp_path: Path, project_name: str, slug: str, package: str
) -> None:
    answers = {"project_name": project_name}
    by_cookiecutter = render_cookiecutter(answers, tmp_path / "cookiecutter")
    by_copier = render_copier(answers, tmp_path / "copier")

    assert by_cookiecutter.name == slug
    assert rendered_names(by_cookiecutter) == (slug, package)
    assert rendered_names(by_copier) == (slug, package)


# --- help and validation at the prompt -----------------------------------------------------

COOKIECUTTER_CONFIG: dict[str, Any] = json.loads(
    (TEMPLATE / "cookiecutter.json").read_text("utf-8")
)
pre_gen = load_hook("pre_gen_project")


@pytest.mark.parametrize("question", list(QUESTIONS))
def test_cookiecutter_shows_the_same_help_as_copier(question: str) -> None:
    prompts = COOKIECUTTER_CONFIG["__prompts__"]
    assert prompts[question] == copier_questions()[question]["help"]


def copier_validation(question: str, answers: dict[str, object]) -> str:
    """What copier says of `answers[question]`: its validator rendered the way copier renders it
    (a sandboxed Jinja environment with the Ansible filters), "" when the answer is fine."""
    environment = SandboxedEnvironment(
        extensions=["jinja2_ansible_filters.AnsibleCoreFiltersExtension"]
    )
    validator = copier_questions()[question].get("validator", "")
    return environment.from_string(validator).render(**answers).strip()


def hook_validation(question: str, answers: dict[str, object]) -> list[str]:
    return [line for line in pre_gen.problems(answers) if line.startswith(f"{question} ")]


SAMPLE_ANSWERS: dict[str, list[str]] = {
    "project_name": [
        "Chat",
        'Bob "Quote" \\ {x}',
        "{{ x }}",
        "{% raw %}",
        "{# comment",
        "}} %} #} { {",
        "Rocket 🚀 👩\u200d💻",
        "\u212a",
        "日本語\u3000チャット",
        "",
        "   ",
        "two\nlines",
        "tab\there",
        "nul\x00",
        "c1\x9b",
        "line\u2028break",
        "non-character\uffff",
    ],
    "project_slug": [
        "chat",
        "chat-service",
        "a.b_c",
        "",
        "-chat",
        "chat-",
        "a b",
        "chat\n",
        "café",
        "\u212aelvin",  # KELVIN SIGN, which a case-insensitive Unicode regex takes for a "k"
    ],
    "package_name": [
        "chat",
        "chat_2",
        "_",
        "_chat",
        "class",
        "match",
        "json",
        "asyncio",
        "My_Pkg",
        "my-pkg",
        "1abc",
        "café",
        "chat\n",
        "",
    ],
    "description": ["A chat.", "", 'Quote " and \\', "two\nlines", "bell\x07", "a {{ b }}"],
    "author": ["Ada", "", "Zoë O'Brien", "two\nlines", "del\x7f", "{% x %}"],
}


def sample_cases() -> list[Any]:
    return [
        pytest.param(question, answer, id=f"{question}-{answer!r}")
        for question, answers in SAMPLE_ANSWERS.items()
        for answer in answers
    ]


def hook_answers(**changes: object) -> dict[str, object]:
    answers: dict[str, object] = {
        "project_name": "Chat",
        "project_slug": "chat",
        "package_name": "chat",
        "description": "A chat.",
        "author": "Ada",
    }
    return answers | changes


@pytest.mark.parametrize(("question", "answer"), sample_cases())
def test_copier_refuses_at_its_prompt_exactly_what_the_hook_refuses(
    question: str, answer: str
) -> None:
    answers = hook_answers(**{question: answer})
    by_copier = copier_validation(question, answers)
    by_hook = hook_validation(question, answers)
    assert bool(by_copier) == bool(by_hook), (by_copier, by_hook)
    if by_hook:
        # Both name the question and the answer the same way.
        assert by_copier.startswith(f"{question} {answer!r}")
        assert by_hook[0].startswith(f"{question} {answer!r}")


def test_copier_refuses_every_keyword_and_standard_module_the_hook_refuses() -> None:
    names = {
        name
        for name in [*keyword.kwlist, *keyword.softkwlist, *sys.stdlib_module_names]
        if re.fullmatch("[a-z][a-z0-9_]*", name)
    }
    accepted = [
        name
        for name in sorted(names)
        if hook_validation("package_name", hook_answers(package_name=name))
        and not copier_validation("package_name", hook_answers(package_name=name))
    ]
    assert accepted == [], "copier.yml's package_name validator must list these"


def test_the_free_text_validators_use_the_hooks_patterns() -> None:
    for pattern in (pre_gen.NOT_ONE_LINE, pre_gen.JINJA_TAG):
        # A Jinja string literal doubles each backslash.
        literal = pattern.pattern.replace("\\", "\\\\")
        for question in pre_gen.FREE_TEXT:
            assert literal in copier_questions()[question]["validator"]


def test_the_slugifier_falls_back_to_the_slug_the_hook_explains() -> None:
    assert f"or '{pre_gen.NO_SLUG}'" in SLUGIFIER.read_text("utf-8")
    for default in (QUESTIONS["project_slug"], copier_questions()["project_slug"]["default"]):
        assert "slug_of(" in str(default), "the slug default must call slug.jinja's slugifier"


NO_ASCII_NAME = "日本語 チャット"


def test_cookiecutter_asks_for_a_slug_when_the_name_has_no_ascii_letter(tmp_path: Path) -> None:
    # The command line in a folder that exists, as a user runs it: before the fallback, the
    # empty slug named that folder itself ("directory already exists").
    command = [sys.executable, "-m", "cookiecutter", "--no-input", "--default-config"]
    with pytest.raises(CommandFailed) as failure:
        run([*command, TEMPLATE, f"project_name={NO_ASCII_NAME}"], cwd=tmp_path)
    assert f"the project_name {NO_ASCII_NAME!r} has no ASCII letter or digit" in str(failure.value)
    assert "already exists" not in str(failure.value)
    assert list(tmp_path.iterdir()) == []


def test_copier_asks_for_a_slug_when_the_name_has_no_ascii_letter(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no ASCII letter or digit to make a slug of"):
        render_copier({"project_name": NO_ASCII_NAME}, tmp_path / "project")
    assert not (tmp_path / "project").exists()


def test_a_name_with_no_ascii_letter_renders_with_an_explicit_slug(tmp_path: Path) -> None:
    answers = {"project_name": NO_ASCII_NAME, "project_slug": "nihongo-chat"}
    by_cookiecutter = render_cookiecutter(answers, tmp_path / "cookiecutter")
    by_copier = render_copier(answers, tmp_path / "copier")
    assert rendered_names(by_cookiecutter) == ("nihongo-chat", "nihongo_chat")
    assert rendered_names(by_copier) == ("nihongo-chat", "nihongo_chat")


def test_cookiecutter_asks_each_question_with_its_help(tmp_path: Path) -> None:
    # Every default accepted with Enter; a wide terminal, so that no help line is wrapped.
    result = subprocess.run(
        [sys.executable, "-m", "cookiecutter", "--default-config", str(TEMPLATE)],
        cwd=tmp_path,
        input="\n" * len(QUESTIONS),
        env={**os.environ, "COLUMNS": "1000"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    for question in QUESTIONS:
        assert COOKIECUTTER_CONFIG["__prompts__"][question] in result.stdout, question


def test_cookiecutter_reads_the_slugifier_of_the_template_it_renders(tmp_path: Path) -> None:
    # One process renders several copies of the template (cruft's clones, the bench's old
    # revision), and Python imports slug_extension.py once: from a copy since deleted, here.
    first, second = tmp_path / "first", tmp_path / "second"
    for copy in (first, second):
        shutil.copytree(TEMPLATE, copy, ignore=shutil.ignore_patterns(*NOT_TEMPLATE))
    sys.modules.pop("slug_extension", None)
    assert render_cookiecutter({"project_name": "Chat"}, tmp_path / "out1", first).name == "chat"
    shutil.rmtree(first)
    macro = second / "slug.jinja"
    macro.write_text(macro.read_text("utf-8").replace("{{- ns.slug", "{{- 'second-' ~ ns.slug"))
    rendered = render_cookiecutter({"project_name": "Chat"}, tmp_path / "out2", second)
    assert rendered.name == "second-chat"
