"""Delete the files of the features the user did not choose, give a project that
authenticates a random signing secret in its git-ignored `.env`, and print the next steps.

This file holds no Jinja: cookiecutter runs it as its post-generation hook and copier runs it,
unchanged, as a task (also during `copier update`, possibly several times). It works in the
current directory, which both engines set to the generated project, and reads the answers from
the file the template renders for it, then deletes that file. Running it again finds no answers
file and changes nothing, so it is idempotent; it never touches the network (so no uv.lock is
written here: the user's first `uv sync` writes it). Copier passes its operation as the one
argument, so that `copier update` does not print the steps of a new project.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

ANSWERS_FILE = ".template-answers.json"

# The one list of which paths belong to which feature. A key is a feature answer: a boolean
# prompt ("use_rooms") keeps its paths when true; "question=value" keeps them when the answer
# equals the value; "a&b" keeps them when both hold (files two features share). Paths are
# relative to the project root; "{package_name}" is filled in.
MANIFEST: dict[str, tuple[str, ...]] = {
    "use_rooms": (
        "src/{package_name}/rooms.py",
        "tests/test_rooms.py",
    ),
    "use_redis": (
        "src/{package_name}/redis_broker.py",
        "src/{package_name}/history_redis.py",
        "tests/redis_server.py",
        "tests/test_redis_broker.py",
        "tests/test_workers.py",
        "tests/test_redis_faults.py",
        "src/{package_name}/presence_redis.py",
        "tests/test_presence_redis.py",
        "tests/test_recovery_redis.py",
    ),
    "use_sse": (
        "src/{package_name}/sse.py",
        "tests/test_sse.py",
        "src/{package_name}/exit_signals.py",
        "tests/test_exit_signals.py",
    ),
    "use_sse&use_redis": (
        "tests/test_sse_redis.py",
        "tests/test_sse_redis_faults.py",
    ),
    "use_heartbeats": (
        "src/{package_name}/heartbeat.py",
        "tests/test_heartbeat.py",
    ),
    "auth=query_token": (
        "src/{package_name}/auth_token.py",
        "tests/test_auth_token.py",
    ),
    "auth=cookie": (
        "src/{package_name}/auth_cookie.py",
        "tests/test_auth_cookie.py",
    ),
}

# The local settings file, git-ignored, that holds the generated signing secret.
ENV_FILE = ".env"
SECRET_SETTING = "AUTH_SECRET"


def is_chosen(feature: str, answers: dict[str, object]) -> bool:
    """Whether a manifest key holds for these answers: every one of its "&" parts must."""
    if "&" in feature:
        return all(is_chosen(part, answers) for part in feature.split("&"))
    question, equals, value = feature.partition("=")
    if question not in answers:
        raise KeyError(f"the manifest names {question!r}, which is not a question")
    answer = answers[question]
    if equals:
        return str(answer) == value
    if not isinstance(answer, bool):
        raise TypeError(f"{question!r} is not a yes/no question; write '{question}=VALUE'")
    return answer


def unchosen_paths(answers: dict[str, object]) -> list[str]:
    """The manifest's paths for every feature these answers leave out, sorted."""
    paths = {
        path.format(package_name=answers["package_name"])
        for feature, feature_paths in MANIFEST.items()
        if not is_chosen(feature, answers)
        for path in feature_paths
    }
    return sorted(paths)


def prune(project: Path, answers: dict[str, object]) -> list[str]:
    """Delete the unchosen paths under `project`; return the ones that were there."""
    removed = []
    for relative in unchosen_paths(answers):
        path = project / relative
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(relative)
    return removed


def write_secret(project: Path, answers: dict[str, object]) -> bool:
    """Give an authenticating project a random signing secret in its git-ignored `.env`.

    Only when auth is chosen, and only when `.env` does not already set one: a later run (copier
    update) keeps the secret, and the user's own `.env` lines, as they are. True if it wrote.
    """
    if answers.get("auth", "none") == "none":
        return False
    path = project / ENV_FILE
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    if any(line.startswith(f"{SECRET_SETTING}=") for line in existing.splitlines()):
        return False
    separator = "" if not existing or existing.endswith("\n") else "\n"
    line = f"{SECRET_SETTING}={secrets.token_urlsafe(48)}\n"
    path.write_text(
        f"{existing}{separator}# Written at generation; keep it out of version control.\n{line}",
        encoding="utf-8",
    )
    return True


def read_answers(project: Path) -> dict[str, object] | None:
    """The rendered answers, or None when a previous run already consumed them."""
    path = project / ANSWERS_FILE
    if not path.exists():
        return None
    answers = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(answers, dict):
        raise ValueError(f"{ANSWERS_FILE} must hold a JSON object")
    return answers


def next_steps(project: Path, shell_folder: Path) -> str:
    """What to run after generation, from the folder the user's shell is in."""
    in_repository = any((folder / ".git").exists() for folder in (project, *project.parents))
    relative = os.path.relpath(project, shell_folder)
    steps = [f"cd {project if relative.startswith(os.pardir) else relative}"]
    if not in_repository:
        steps.append("git init                    # pre-commit installs into a repository")
    steps += [
        "uv sync                     # .venv with the dev tools; commit the uv.lock it writes",
        "uv run pre-commit install   # ruff and mypy at every commit",
        "make dev                    # serve with auto-reload: http://127.0.0.1:8000/",
    ]
    return "Next steps:\n" + "".join(f"    {step}\n" for step in steps)


def main(argv: Sequence[str] = ()) -> int:
    operation = argv[0] if argv else "copy"  # cookiecutter passes no argument
    project = Path.cwd()
    answers = read_answers(project)
    if answers is None:
        return 0
    prune(project, answers)
    write_secret(project, answers)
    (project / ANSWERS_FILE).unlink()
    if operation == "copy":
        # The engines run hooks in the project folder; PWD is still the user's shell's folder.
        print(next_steps(project, Path(os.environ.get("PWD", project.parent))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
