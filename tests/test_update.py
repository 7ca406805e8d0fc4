"""Growing a generated project: `copier update` between two tagged template versions, turning
every feature on and off later, and cruft for projects made with cookiecutter.

Each test works on a throwaway git repository of the template with two tags: v1 is the working
tree as it is, v2 adds a line to the generated README and a comment to a generated module. The
commands are the ones the root README's "Growing your service" section gives.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from rendering import (
    CHECKS,
    FEATURES,
    NOT_TEMPLATE,
    TEMPLATE,
    CommandFailed,
    assert_checks_pass,
    install,
    load_hook,
    package_of,
    render_cookiecutter,
    run,
)

post_gen = load_hook("post_gen_project")

COPIER_ANSWERS = ".copier-answers.yml"
CRUFT_STATE = ".cruft.json"
PROJECT = "{{cookiecutter.project_slug}}"
TOOLS = Path(sys.executable).parent

# The visible changes between the two tags.
TEMPLATE_CHANGE = "This line was added to the template between v1 and v2."
MODULE_CHANGE = "# Added to the template between v1 and v2."
CHANGED_MODULE = "src/{package_name}/hub.py"
# The one toggle that pays for an install: rooms touch the most seams (app wiring, settings,
# README, demo page). The other toggles equal a fresh generation, which test_matrix checks.
CHECKED_TOGGLE = "use_rooms"
# The user's own edit, near the top of the README, far from the template's change at its end.
USER_EDIT = "A paragraph the service's developers wrote themselves."

# Commits made by the tests and by the engines they drive get a fixed identity and no signing,
# whatever the machine's git configuration says.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Template Tests",
    "GIT_AUTHOR_EMAIL": "tests@example.invalid",
    "GIT_COMMITTER_NAME": "Template Tests",
    "GIT_COMMITTER_EMAIL": "tests@example.invalid",
    "GIT_CONFIG_COUNT": "2",
    "GIT_CONFIG_KEY_0": "commit.gpgsign",
    "GIT_CONFIG_VALUE_0": "false",
    "GIT_CONFIG_KEY_1": "tag.gpgsign",
    "GIT_CONFIG_VALUE_1": "false",
}


@pytest.fixture(autouse=True)
def git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in GIT_ENV.items():
        monkeypatch.setenv(name, value)


def git(repo: Path, *args: str) -> str:
    return run(["git", *args], cwd=repo, env={**os.environ, **GIT_ENV})


def commit_all(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--no-verify", "-m", message)


def start_repository(project: Path) -> None:
    """What a user does right after generating: `git init` and a first commit."""
    git(project, "init", "-q")
    commit_all(project, "Generated")


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template in its own git repository: v1 is the working tree, v2 changes it visibly."""
    repo = tmp_path_factory.mktemp("template-repo") / "template"
    shutil.copytree(TEMPLATE, repo, ignore=shutil.ignore_patterns(*NOT_TEMPLATE), symlinks=True)
    git(repo, "init", "-q")
    commit_all(repo, "v1")
    git(repo, "tag", "v1")
    readme = repo / PROJECT / "README.md"
    readme.write_text(readme.read_text("utf-8") + f"\n{TEMPLATE_CHANGE}\n", "utf-8")
    module = repo / PROJECT / CHANGED_MODULE.format(package_name="{{cookiecutter.package_name}}")
    # At the top: ruff format wants two blank lines before a comment that follows a function.
    module.write_text(f"{MODULE_CHANGE}\n" + module.read_text("utf-8"), "utf-8")
    commit_all(repo, "v2: a visible change")
    git(repo, "tag", "v2")
    return repo


def copier_copy(template: Path, ref: str, answers: Mapping[str, object], dest: Path) -> Path:
    """`copier copy --trust --defaults --vcs-ref REF -d ... TEMPLATE DEST`, through the API."""
    import copier

    copier.run_copy(
        str(template),
        dest,
        vcs_ref=ref,
        data=dict(answers),
        defaults=True,
        unsafe=True,
        quiet=True,
    )
    return dest


def cli_value(answer: object) -> str:
    """An answer as typed after `-d NAME=`: yes/no as true/false, a choice as its bare word."""
    return json.dumps(answer) if isinstance(answer, bool) else str(answer)


def copier_update(project: Path, ref: str, answers: Mapping[str, object] | None = None) -> None:
    """`copier update --trust --defaults --vcs-ref REF -d QUESTION=ANSWER`, the README's command.
    stdin is closed, so a question asked (by copier or a hook) would fail the update."""
    data = [f"--data={name}={cli_value(answer)}" for name, answer in (answers or {}).items()]
    run([TOOLS / "copier", "update", "--trust", "--defaults", "--vcs-ref", ref, *data], project)


def edit_readme(project: Path) -> None:
    """The user's own change: a paragraph under the README's title."""
    readme = project / "README.md"
    title, rest = readme.read_text("utf-8").split("\n", 1)
    readme.write_text(f"{title}\n\n{USER_EDIT}\n{rest}", "utf-8")


def tree(root: Path, *, leave_out: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under root by relative path, without version control and local products."""
    found = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[0] in (".git", ".venv") or relative.as_posix() in leave_out:
            continue
        if path.is_file() or path.is_symlink():
            found[relative.as_posix()] = path.read_bytes()
    return found


def assert_same_tree(actual: Path, expected: Path, leave_out: tuple[str, ...] = ()) -> None:
    got, want = tree(actual, leave_out=leave_out), tree(expected, leave_out=leave_out)
    assert sorted(got) == sorted(want), "the two projects hold different files"
    differing = [name for name in want if got[name] != want[name]]
    assert differing == [], "these files differ from a fresh generation"


def merge_leftovers(project: Path) -> list[str]:
    """Rejected hunks, conflict markers and the hook's answers file: none may survive."""
    found = []
    for name, content in tree(project).items():
        if name.endswith((".rej", ".orig")) or name == post_gen.ANSWERS_FILE:
            found.append(name)
        elif b"\n<<<<<<< " in content or b"\n>>>>>>> " in content:
            found.append(f"{name}: conflict markers")
    return found


def assert_updated_to_v2_with_the_edit(project: Path) -> None:
    readme = (project / "README.md").read_text("utf-8")
    assert USER_EDIT in readme, "the user's edit was lost"
    assert TEMPLATE_CHANGE in readme, "the template's change did not arrive"
    module = project / CHANGED_MODULE.format(package_name=package_of(project))
    assert MODULE_CHANGE in module.read_text("utf-8")
    assert merge_leftovers(project) == []


# --- copier update between two tags ---------------------------------------------------------


def test_copier_update_merges_the_template_change_and_keeps_the_users_edit(
    template_repo: Path, tmp_path: Path
) -> None:
    project = copier_copy(template_repo, "v1", {}, tmp_path / "project")
    start_repository(project)
    edit_readme(project)
    commit_all(project, "Our own README")

    # The README's command, through the CLI: every question is answered, so with stdin closed
    # it must ask nothing (a prompt would fail), and the hooks must not ask either.
    run([TOOLS / "copier", "update", "--trust", "--skip-answered", "--vcs-ref", "v2"], project)

    assert_updated_to_v2_with_the_edit(project)
    answers = (project / COPIER_ANSWERS).read_text("utf-8")
    assert "_commit: v2" in answers.splitlines()
    # Apart from the user's edit, the project is exactly what v2 generates.
    fresh = copier_copy(template_repo, "v2", {}, tmp_path / "fresh")
    edit_readme(fresh)
    assert_same_tree(project, fresh)

    # Updating again to the same version changes nothing: the hooks are idempotent.
    commit_all(project, "Updated to v2")
    copier_update(project, "v2")
    assert git(project, "status", "--porcelain") == ""


def toggles() -> Iterator[object]:
    """Every feature question: a yes/no goes off, on, off; a choice goes from its default to
    each other answer and back."""
    for feature, answers in FEATURES.items():
        if all(isinstance(answer, bool) for answer in answers):
            yield pytest.param(feature, False, True, id=f"{feature}-off-on-off")
        else:
            start, *others = answers
            for other in others:
                yield pytest.param(feature, start, other, id=f"{feature}-{start}-{other}-{start}")


@pytest.mark.parametrize(("feature", "start", "target"), list(toggles()))
def test_turning_a_feature_on_and_off_equals_a_fresh_generation(
    feature: str, start: object, target: object, template_repo: Path, tmp_path: Path
) -> None:
    project = copier_copy(template_repo, "v2", {feature: start}, tmp_path / "project")
    start_repository(project)
    edit_readme(project)
    commit_all(project, "Our own README")

    for step, answer in enumerate((target, start)):
        copier_update(project, "v2", {feature: answer})
        assert merge_leftovers(project) == []
        fresh = copier_copy(template_repo, "v2", {feature: answer}, tmp_path / f"fresh-{step}")
        edit_readme(fresh)
        # The answers file included: it must record the new answer, like a fresh one does.
        # `.env` is the user's: the hook adds a random secret when auth comes on (so it differs
        # from a fresh one) and never deletes it when auth goes off.
        assert_same_tree(project, fresh, leave_out=(post_gen.ENV_FILE,))
        commit_all(project, f"{feature}={answer}")


def test_turning_a_feature_off_deletes_its_files_even_when_edited(
    template_repo: Path, tmp_path: Path
) -> None:
    """What the README warns about: the feature's own files go, the user's edits to them
    included (git history keeps them), while edits elsewhere are kept."""
    feature = CHECKED_TOGGLE
    project = copier_copy(template_repo, "v2", {feature: True}, tmp_path / "project")
    start_repository(project)
    edit_readme(project)
    package = package_of(project)
    feature_files = [path.format(package_name=package) for path in post_gen.MANIFEST[feature]]
    for path in feature_files:
        with (project / path).open("a", encoding="utf-8") as edited:
            edited.write("# Our own addition.\n")
    commit_all(project, "Our own edits")

    copier_update(project, "v2", {feature: False})

    assert merge_leftovers(project) == []
    assert [path for path in feature_files if (project / path).exists()] == []
    fresh = copier_copy(template_repo, "v2", {feature: False}, tmp_path / "fresh")
    edit_readme(fresh)
    assert_same_tree(project, fresh)


def test_the_hooks_stay_offline_and_never_prompt() -> None:
    """They run up to three times per `copier update` and inside cruft's temporary renders: they
    may read files and arguments, never the network or the terminal."""
    import ast

    network_or_terminal = {
        "asyncio", "ftplib", "getpass", "http", "httpx", "requests", "smtplib", "socket",
        "ssl", "urllib", "urllib3", "webbrowser",
    }  # fmt: skip
    for hook in sorted((TEMPLATE / "hooks").glob("*.py")):
        tree_ = ast.parse(hook.read_text("utf-8"))
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree_)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree_)
            if isinstance(node, ast.ImportFrom)
        }
        assert not imported & network_or_terminal, f"{hook.name} imports {imported}"
        called = {
            node.func.id
            for node in ast.walk(tree_)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        }
        assert "input" not in called, f"{hook.name} prompts"


@pytest.mark.matrix
@pytest.mark.timeout(1200)
def test_a_project_with_a_feature_turned_on_later_passes_its_own_checks(
    template_repo: Path, tmp_path: Path
) -> None:
    project = copier_copy(template_repo, "v1", {CHECKED_TOGGLE: False}, tmp_path / "project")
    start_repository(project)
    edit_readme(project)
    commit_all(project, "Our own README")
    # A new version and a feature turned on, in one update.
    copier_update(project, "v2", {CHECKED_TOGGLE: True})
    assert_updated_to_v2_with_the_edit(project)
    for path in post_gen.MANIFEST[CHECKED_TOGGLE]:
        assert (project / path.format(package_name=package_of(project))).is_file()

    assert_checks_pass(project, install(project), CHECKS)


# --- projects generated with cookiecutter ---------------------------------------------------


def cruft(project_or_parent: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(TOOLS / "cruft"), *args],
        cwd=project_or_parent,
        env={**os.environ, **GIT_ENV},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        check=False,
    )
    if check and result.returncode != 0:
        command = " ".join(["cruft", *args])
        raise CommandFailed(f"`{command}` exited {result.returncode}:\n{result.stdout}")
    return result


def cruft_create(template: Path, ref: str, answers: Mapping[str, object], parent: Path) -> Path:
    parent.mkdir(parents=True)
    cruft(parent, "create", str(template), "--checkout", ref, "--no-input",
          "--extra-context", json.dumps(dict(answers)))  # fmt: skip
    (project,) = parent.iterdir()
    return project


def test_cruft_check_and_update_between_two_tags(template_repo: Path, tmp_path: Path) -> None:
    project = cruft_create(template_repo, "v1", {}, tmp_path / "project")
    start_repository(project)
    edit_readme(project)
    commit_all(project, "Our own README")

    stale = cruft(project, "check", "--checkout", "v2", check=False)
    assert stale.returncode == 1, stale.stdout
    assert "out of date" in stale.stdout

    cruft(project, "update", "--checkout", "v2", "--skip-apply-ask")
    assert_updated_to_v2_with_the_edit(project)
    assert cruft(project, "check", "--checkout", "v2").returncode == 0

    fresh = cruft_create(template_repo, "v2", {}, tmp_path / "fresh")
    edit_readme(fresh)
    assert_same_tree(project, fresh, leave_out=(CRUFT_STATE,))


def test_cruft_turns_a_feature_on_and_off(template_repo: Path, tmp_path: Path) -> None:
    feature = CHECKED_TOGGLE
    project = cruft_create(template_repo, "v2", {feature: False}, tmp_path / "project")
    start_repository(project)
    edit_readme(project)
    commit_all(project, "Our own README")

    for answer in (True, False):
        # No --checkout: .cruft.json remembers v2.
        cruft(project, "update", "--skip-apply-ask", "--variables-to-update",
              json.dumps({feature: answer}))  # fmt: skip
        assert merge_leftovers(project) == []
        fresh = cruft_create(template_repo, "v2", {feature: answer}, tmp_path / f"fresh-{answer}")
        edit_readme(fresh)
        assert_same_tree(project, fresh, leave_out=(CRUFT_STATE,))
        commit_all(project, f"{feature}={answer}")


def cookiecutter_at(template: Path, ref: str, answers: Mapping[str, object], output: Path) -> Path:
    """`cookiecutter TEMPLATE --checkout REF --no-input ...`: plain cookiecutter, no cruft."""
    clone = output.parent / f"template-at-{ref}"
    git(template, "clone", "-q", "--branch", ref, str(template), str(clone))
    return render_cookiecutter(answers, output, template=clone)


def test_a_cookiecutter_project_moves_to_copier(template_repo: Path, tmp_path: Path) -> None:
    """The README's recipe for a project made with plain cookiecutter: render the same answers
    at the same tag with copier elsewhere, take only its answers file, then update as usual."""
    answers = {"project_name": "Moving Service", "use_rooms": False}
    project = cookiecutter_at(template_repo, "v1", answers, tmp_path / "generated")
    start_repository(project)
    edit_readme(project)
    commit_all(project, "Our own README")

    answers_only = copier_copy(template_repo, "v1", answers, tmp_path / "answers-only")
    shutil.copy2(answers_only / COPIER_ANSWERS, project / COPIER_ANSWERS)
    commit_all(project, "Track the template with copier")

    # The README's command: no --vcs-ref, so the newest tag, v2.
    run([TOOLS / "copier", "update", "--trust", "--skip-answered"], project)
    assert_updated_to_v2_with_the_edit(project)
    fresh = copier_copy(template_repo, "v2", answers, tmp_path / "fresh")
    edit_readme(fresh)
    assert_same_tree(project, fresh)
