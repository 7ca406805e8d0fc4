"""cookiecutter.json is the single source of truth; copier.yml must ask exactly the same."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from rendering import QUESTIONS, TEMPLATE, render_cookiecutter, render_copier

COPIER_CONFIG: dict[str, Any] = yaml.safe_load((TEMPLATE / "copier.yml").read_text("utf-8"))

# The hidden computed question that gives copier's templates the `cookiecutter` namespace.
NAMESPACE = "cookiecutter"


def copier_questions() -> dict[str, dict[str, Any]]:
    return {
        name: spec
        for name, spec in COPIER_CONFIG.items()
        if not name.startswith("_") and name != NAMESPACE
    }


def as_copier_default(cookiecutter_default: str) -> str:
    """cookiecutter writes `cookiecutter.project_name` where copier writes `project_name`."""
    return cookiecutter_default.replace("cookiecutter.", "")


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
