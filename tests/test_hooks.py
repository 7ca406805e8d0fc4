"""The hooks' functions, called directly (cookiecutter-django's habit): fast and precise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rendering import QUESTIONS, load_hook

pre_gen = load_hook("pre_gen_project")
post_gen = load_hook("post_gen_project")


def valid_answers(**changes: object) -> dict[str, object]:
    answers: dict[str, object] = {
        "project_name": "Chat Service",
        "project_slug": "chat-service",
        "package_name": "chat_service",
        "description": "A chat.",
        "author": "Ada",
    }
    for question, default in QUESTIONS.items():
        if isinstance(default, bool):
            answers[question] = default
        elif isinstance(default, list):
            answers[question] = default[0]
    answers.update(changes)
    return answers


# --- pre_gen_project.problems -------------------------------------------------------------


@pytest.mark.parametrize(
    ("slug", "package"),
    [("chat-service", "chat_service"), ("chat.service", "chat"), ("a", "a"), ("x1_y", "x1_y")],
)
def test_valid_names_pass(slug: str, package: str) -> None:
    assert pre_gen.problems(valid_answers(project_slug=slug, package_name=package)) == []


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("project_slug", ""),
        ("project_slug", "chat service"),
        ("project_slug", "-chat"),
        ("package_name", ""),
        ("package_name", "class"),
        ("package_name", "match"),  # a soft keyword: legal as a name, confusing as a package
        ("package_name", "json"),
        ("package_name", "asyncio"),
        ("package_name", "My-Pkg"),
        ("package_name", "My_Pkg"),
        ("package_name", "1abc"),
        ("package_name", "café"),
    ],
)
def test_each_invalid_answer_gives_one_message_naming_it(question: str, answer: str) -> None:
    found = pre_gen.problems(valid_answers(**{question: answer}))
    assert len(found) == 1, found
    assert question in found[0]
    assert repr(answer) in found[0]


@pytest.mark.parametrize("question", ["project_name", "description", "author"])
@pytest.mark.parametrize(
    "answer",
    [
        "two\nlines",
        "carriage\rreturn",
        "a\ttab",
        "nul\x00",
        "bell\x07",
        "delete\x7f",
        "c1 control\x85",
        "line\u2028separator",
        "paragraph\u2029separator",
        "lone \ud800 surrogate",
        "non-character \ufffe",
    ],
)
def test_a_free_text_answer_that_is_not_one_printable_line_is_refused(
    question: str, answer: str
) -> None:
    found = pre_gen.problems(valid_answers(**{question: answer}))
    assert found == [
        f"{question} {answer!r} must be one line of printable text, "
        f"without U+{ord(pre_gen.NOT_ONE_LINE.search(answer).group()):04X}"
    ]


@pytest.mark.parametrize("question", ["project_name", "description", "author"])
@pytest.mark.parametrize(
    "answer",
    [
        'Bob "Quote" O\'Brien \\ {x} }} %} #} { { </script>',
        "Rocket 🚀 👩\u200d💻 (a zero-width joiner)",
        "日本語\u3000チャット (an ideographic space)",
        "non\u00a0breaking space",
        "עברית ‏mark",
        "Ｆｕｌｌ（ｗｉｄｔｈ）",
    ],
)
def test_any_one_line_of_printable_text_is_a_free_text_answer(question: str, answer: str) -> None:
    assert pre_gen.problems(valid_answers(**{question: answer})) == []


@pytest.mark.parametrize("question", ["project_name", "description", "author"])
@pytest.mark.parametrize(
    ("answer", "tag"), [("{{ 7 * 7 }}", "{{"), ("a {% raw %}", "{%"), ("{# c #}", "{#")]
)
def test_a_free_text_answer_with_a_jinja_tag_is_refused(
    question: str, answer: str, tag: str
) -> None:
    found = pre_gen.problems(valid_answers(**{question: answer}))
    assert len(found) == 1, found
    assert found[0].startswith(f"{question} {answer!r} must not hold {tag!r}: ")


def test_a_blank_project_name_is_refused() -> None:
    assert pre_gen.problems(valid_answers(project_name="  ")) == [
        "project_name '  ' must not be empty"
    ]


@pytest.mark.parametrize("slug", [pre_gen.NO_SLUG, ""])
def test_a_name_with_no_ascii_letter_or_digit_asks_for_a_slug(slug: str) -> None:
    answers = valid_answers(
        project_name="日本語 チャット", project_slug=slug, package_name=slug.replace("-", "_")
    )
    found = [line for line in pre_gen.problems(answers) if line.startswith("project_slug")]
    assert len(found) == 1, found
    assert "'日本語 チャット' has no ASCII letter or digit" in found[0]
    assert "answer project_slug yourself" in found[0]


def test_the_no_slug_fallback_is_refused_but_its_package_name_is_not() -> None:
    """The fallback is meant to be refused once, on the slug, so the user reads one line."""
    assert not pre_gen.DISTRIBUTION_NAME.fullmatch(pre_gen.NO_SLUG)
    package = pre_gen.NO_SLUG.replace("-", "_")
    found = pre_gen.problems(valid_answers(project_slug="ok", package_name=package))
    assert found == []


def test_a_name_with_no_ascii_letter_keeps_an_explicit_slug() -> None:
    answers = valid_answers(project_name="日本語 チャット", project_slug="nihongo-chat")
    assert pre_gen.problems(answers) == []


@pytest.mark.parametrize("question", ["project_slug", "package_name"])
def test_a_name_with_a_trailing_newline_is_refused(question: str) -> None:
    found = pre_gen.problems(valid_answers(**{question: "chat\n"}))
    assert len(found) == 1, found
    assert f"{question} 'chat\\n'" in found[0]


def test_every_problem_is_reported_at_once() -> None:
    found = pre_gen.problems(valid_answers(project_slug="bad slug", package_name="class"))
    assert len(found) == 2, found


def test_main_reads_answers_from_its_argument_and_exits_non_zero(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert pre_gen.main(["hook", json.dumps(valid_answers())]) == 0
    assert pre_gen.main(["hook", json.dumps(valid_answers(package_name="class"))]) == 1
    assert "package_name 'class'" in capsys.readouterr().err


# --- post_gen_project ---------------------------------------------------------------------


def test_is_chosen_for_yes_no_and_choice_features() -> None:
    answers = {"use_rooms": True, "use_sse": False, "auth": "cookie"}
    assert post_gen.is_chosen("use_rooms", answers)
    assert not post_gen.is_chosen("use_sse", answers)
    assert post_gen.is_chosen("auth=cookie", answers)
    assert not post_gen.is_chosen("auth=none", answers)


def test_is_chosen_refuses_unknown_questions_and_bare_choice_questions() -> None:
    with pytest.raises(KeyError, match="use_nothing"):
        post_gen.is_chosen("use_nothing", {"use_rooms": True})
    with pytest.raises(TypeError, match="auth"):
        post_gen.is_chosen("auth", {"auth": "cookie"})


def test_is_chosen_for_features_that_need_several_answers() -> None:
    answers = {"use_sse": True, "use_redis": False, "auth": "cookie"}
    assert not post_gen.is_chosen("use_sse&use_redis", answers)
    assert post_gen.is_chosen("use_sse&use_redis", answers | {"use_redis": True})
    assert post_gen.is_chosen("use_sse&auth=cookie", answers)
    assert not post_gen.is_chosen("use_sse&auth=none", answers)
    with pytest.raises(KeyError, match="use_nothing"):
        post_gen.is_chosen("use_sse&use_nothing", answers)


def manifest_parts() -> list[str]:
    """Every single-answer condition the manifest's keys are made of."""
    return [part for feature in post_gen.MANIFEST for part in feature.split("&")]


def test_manifest_names_only_questions_that_exist() -> None:
    for part in manifest_parts():
        question = part.partition("=")[0]
        assert question in QUESTIONS, f"MANIFEST names {question!r}, not in cookiecutter.json"


def all_features(chosen: bool) -> dict[str, object]:
    """Answers that choose every manifest feature, or none of them."""
    answers: dict[str, object] = valid_answers()
    for part in manifest_parts():
        question, equals, value = part.partition("=")
        if not equals:
            answers[question] = chosen
        elif chosen:
            answers[question] = value
        else:
            answers[question] = f"not-{value}"
    return answers


def test_unchosen_paths_lists_every_path_of_unchosen_features() -> None:
    expected = sorted(
        {
            path.format(package_name="chat_service")
            for paths in post_gen.MANIFEST.values()
            for path in paths
        }
    )
    assert post_gen.unchosen_paths(all_features(chosen=False)) == expected


@pytest.mark.parametrize(
    "answers",
    [
        valid_answers(**dict([feature.partition("=")[::2]]))
        for feature in post_gen.MANIFEST
        if "=" in feature
    ]
    + [all_features(chosen=True)],
    ids=lambda answers: str(answers.get("auth")),
)
def test_unchosen_paths_keeps_exactly_the_chosen_features_paths(answers: dict[str, object]) -> None:
    unchosen = set(post_gen.unchosen_paths(answers))
    for feature, paths in post_gen.MANIFEST.items():
        named = {path.format(package_name="chat_service") for path in paths}
        if post_gen.is_chosen(feature, answers):
            assert not named & unchosen, f"{feature} is chosen, its paths must stay"
        else:
            assert named <= unchosen, f"{feature} is not chosen, its paths must go"


def make_tree(root: Path, relative_paths: list[str]) -> None:
    for relative in relative_paths:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x\n", encoding="utf-8")


def test_prune_deletes_files_and_folders_and_keeps_the_rest(tmp_path: Path) -> None:
    answers = {"package_name": "pkg", "use_a": False, "use_b": True}
    manifest = {"use_a": ("src/{package_name}/a.py", "tests/a"), "use_b": ("src/b.py",)}
    make_tree(tmp_path, ["src/pkg/a.py", "tests/a/test_a.py", "src/b.py", "src/pkg/core.py"])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(post_gen, "MANIFEST", manifest)
        removed = post_gen.prune(tmp_path, answers)
        assert post_gen.prune(tmp_path, answers) == []

    assert removed == ["src/pkg/a.py", "tests/a"]
    remaining = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert remaining == ["src/b.py", "src/pkg/core.py"]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_main_prunes_removes_the_answers_file_and_is_idempotent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "none" chooses no auth module either, and no secret is written.
    answers = all_features(chosen=False) | {"auth": "none"}
    every_path = [
        path.format(package_name="chat_service")
        for paths in post_gen.MANIFEST.values()
        for path in paths
    ]
    make_tree(tmp_path, [*every_path, "src/chat_service/app.py"])
    (tmp_path / post_gen.ANSWERS_FILE).write_text(json.dumps(answers), encoding="utf-8")
    monkeypatch.chdir(tmp_path)

    assert post_gen.main() == 0
    after_first_run = snapshot(tmp_path)
    assert post_gen.main() == 0

    assert snapshot(tmp_path) == after_first_run
    assert post_gen.ANSWERS_FILE not in after_first_run
    assert list(after_first_run) == ["src/chat_service/app.py"]


def test_main_prints_the_next_steps_once_for_a_new_project_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = all_features(chosen=True) | {"auth": "none"}
    project = tmp_path / "chat-service"
    for operation, expected in [("copy", True), ("update", False)]:
        project.mkdir()
        (project / post_gen.ANSWERS_FILE).write_text(json.dumps(answers), encoding="utf-8")
        monkeypatch.chdir(project)
        monkeypatch.setenv("PWD", str(tmp_path))

        assert post_gen.main([operation]) == 0
        assert post_gen.main([operation]) == 0  # a second run: nothing more to say
        printed = capsys.readouterr().out
        assert printed.count("Next steps:") == int(expected), (operation, printed)
        shutil.rmtree(project)
    monkeypatch.setenv("PWD", str(tmp_path))
    project.mkdir()
    (project / post_gen.ANSWERS_FILE).write_text(json.dumps(answers), encoding="utf-8")
    monkeypatch.chdir(project)
    assert post_gen.main() == 0  # cookiecutter: no argument, a new project
    assert "Next steps:" in capsys.readouterr().out


def test_next_steps_start_from_the_users_folder_and_init_git_only_outside_a_repository(
    tmp_path: Path,
) -> None:
    project = tmp_path / "out" / "chat-service"
    project.mkdir(parents=True)
    steps = post_gen.next_steps(project, tmp_path).splitlines()
    commands = [line.split("#")[0].strip() for line in steps[1:]]
    assert commands == [
        f"cd {Path('out', 'chat-service')}",
        "git init",
        "uv sync",
        "uv run pre-commit install",
        "make dev",
    ]
    elsewhere = tmp_path / "elsewhere"
    assert post_gen.next_steps(project, elsewhere).startswith(f"Next steps:\n    cd {project}\n")
    (tmp_path / ".git").mkdir()  # generated inside a repository (or updated in one)
    assert "git init" not in post_gen.next_steps(project, tmp_path)


# --- post_gen_project.write_secret --------------------------------------------------------


def secret_lines(project: Path) -> list[str]:
    text = (project / post_gen.ENV_FILE).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.startswith("AUTH_SECRET=")]


@pytest.mark.parametrize("auth", ["query_token", "cookie"])
def test_write_secret_writes_a_long_random_secret_once(tmp_path: Path, auth: str) -> None:
    assert post_gen.write_secret(tmp_path, valid_answers(auth=auth))
    (line,) = secret_lines(tmp_path)
    assert len(line.partition("=")[2]) >= 32

    assert not post_gen.write_secret(tmp_path, valid_answers(auth=auth)), "idempotent"
    assert secret_lines(tmp_path) == [line]


def test_write_secret_writes_nothing_without_auth(tmp_path: Path) -> None:
    assert not post_gen.write_secret(tmp_path, valid_answers(auth="none"))
    assert not (tmp_path / post_gen.ENV_FILE).exists()


def test_write_secret_keeps_an_existing_env_file_and_its_secret(tmp_path: Path) -> None:
    env_file = tmp_path / post_gen.ENV_FILE
    env_file.write_text("SERVER_PORT=9000", encoding="utf-8")
    assert post_gen.write_secret(tmp_path, valid_answers(auth="cookie"))
    text = env_file.read_text(encoding="utf-8")
    assert text.startswith("SERVER_PORT=9000\n"), "the user's lines stay as they were"
    assert len(secret_lines(tmp_path)) == 1

    env_file.write_text("AUTH_SECRET=mine\n", encoding="utf-8")
    assert not post_gen.write_secret(tmp_path, valid_answers(auth="cookie"))
    assert env_file.read_text(encoding="utf-8") == "AUTH_SECRET=mine\n"


def test_two_projects_get_different_secrets(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    post_gen.write_secret(first, valid_answers(auth="cookie"))
    post_gen.write_secret(second, valid_answers(auth="cookie"))
    assert secret_lines(first) != secret_lines(second)
