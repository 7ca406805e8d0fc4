"""actionlint checks the template's own CI and the CI a generated project gets."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from rendering import DEFAULT, TEMPLATE, CommandFailed, render_cookiecutter, run


def tool(name: str, how_to_get_it: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: {how_to_get_it}")
    return found


def actionlint(*workflows: Path) -> None:
    command: list[str | Path] = [
        tool("actionlint", "`pip install -r requirements-dev.txt` installs it"),
        # actionlint checks the shell in `run:` steps with shellcheck, when it can find it.
        f"-shellcheck={tool('shellcheck', '`apt-get install shellcheck` installs it')}",
        *workflows,
    ]
    try:
        run(command, cwd=TEMPLATE)
    except CommandFailed as failure:
        pytest.fail(str(failure), pytrace=False)


def test_template_workflows_pass_actionlint() -> None:
    workflows = sorted((TEMPLATE / ".github" / "workflows").glob("*.yml"))
    assert workflows, "the template has no workflow under .github/workflows"
    actionlint(*workflows)


def test_generated_ci_workflow_passes_actionlint(tmp_path: Path) -> None:
    project = render_cookiecutter(DEFAULT.answers, tmp_path)
    workflow = project / ".github" / "workflows" / "ci.yml"
    assert workflow.is_file(), "the generated project has no .github/workflows/ci.yml"
    actionlint(workflow)
