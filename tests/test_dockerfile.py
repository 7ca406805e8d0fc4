"""The generated Dockerfile: hadolint's rules, and uv's multi-stage pattern (the locked
environment built in a first stage, a final stage that holds only it and runs as non-root)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from rendering import DEFAULT, CommandFailed, render_cookiecutter, run


@pytest.fixture(scope="module")
def dockerfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = render_cookiecutter(DEFAULT.answers, tmp_path_factory.mktemp("docker"))
    return project / "Dockerfile"


def stages(dockerfile: Path) -> list[list[str]]:
    """Each stage's instructions, continuation lines joined, comments dropped."""
    text = dockerfile.read_text(encoding="utf-8").replace("\\\n", " ")
    found: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            found.append([])
        found[-1].append(line)
    return found


def test_the_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if hadolint is None:
        pytest.fail("hadolint is missing: `pip install -r requirements-dev.txt` installs it")
    try:
        run([hadolint, dockerfile], cwd=dockerfile.parent)
    except CommandFailed as failure:
        pytest.fail(str(failure), pytrace=False)


def test_uv_builds_the_locked_environment_and_the_final_stage_holds_only_it(
    dockerfile: Path,
) -> None:
    builder, final = stages(dockerfile)
    build = " ".join(builder)
    assert "UV_COMPILE_BYTECODE=1" in build, "bytecode compiled at build time"
    assert "if [ -f uv.lock ]; then uv sync --locked" in build, "the lock, when there is one"
    assert "--no-dev" in build, "no dev tools in the image"
    assert "--no-editable" in build, "the environment must not refer back to the source tree"

    assert final[0].startswith("FROM python:"), final[0]
    copies = [line for line in final if line.startswith("COPY")]
    assert copies == ["COPY --from=builder /app/.venv /app/.venv"], "only the environment"
    assert not [line for line in final if line.startswith("RUN") and "uv" in line.split()]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users, "the final stage sets a user"
    assert users[-1].split(":")[0] not in ("0", "root"), users
    assert users[-1].split(":")[0].isdigit(), "by number, for runAsNonRoot checks"
    (healthcheck,) = [line for line in final if line.startswith("HEALTHCHECK")]
    assert ' CMD ["python", "-c", ' in healthcheck, "exec form: no shell in between"
