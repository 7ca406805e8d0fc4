"""Refuse answers that would generate a broken project, before anything is written.

Cookiecutter runs this file as its pre-generation hook after rendering the one Jinja line
below; copier runs it as its first task with the answers as a JSON argument. Either way an
invalid answer stops generation with one line naming the answer and the rule, and the engine
removes what it had created.
"""

from __future__ import annotations

import json
import keyword
import re
import sys

# The one Jinja seam: cookiecutter renders this into the answers as JSON. `tojson` escapes
# quotes, so the rendered text can never end the string early.
RENDERED_ANSWERS = r"""{{ cookiecutter|tojson }}"""

# PEP 508 names, which is what PyPI and pip accept as a distribution name.
DISTRIBUTION_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$", re.IGNORECASE | re.ASCII)

# The free-text answers. Each lands in TOML, JSON, YAML, HTML and Markdown, escaped for each
# (never in Python source: see about.py in the project), so any one line of text is fine but
# for the two things below.
FREE_TEXT = ("project_name", "description", "author")
# What no escaping keeps on one line in every one of those files: control characters (line
# breaks and tabs among them), the Unicode line and paragraph separators (YAML breaks lines at
# them), lone surrogates (not encodable as UTF-8) and U+FFFE/U+FFFF (YAML refuses them).
# copier.yml's validators use this very pattern; tests/test_questions.py keeps them in step.
NOT_ONE_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")
# The start of a Jinja tag (an opening brace, then a brace, percent sign or hash; written with
# \x7b so that cookiecutter, which renders this file, does not take it for one). Typed at a
# prompt, such an answer renders as it is; but cruft update hands the answers back to
# cookiecutter as extra context, which renders them as Jinja: the name would change, or
# fail to render, on the first update. So it is refused.
JINJA_TAG = re.compile(r"\x7b[\x7b%#]")

# What the slugifier (slug.jinja, which both engines use) gives for a name with no ASCII letter or
# digit, rather than "": cookiecutter creates the project folder before any hook runs, and an
# empty name is the output folder itself ("directory already exists"). It is not a valid
# distribution name, so it is refused below, with a message that says what to do.
NO_SLUG = "ascii-slug-needed-"
ASCII_LETTER_OR_DIGIT = re.compile(r"[a-z0-9]", re.IGNORECASE | re.ASCII)


def text_problem(question: str, answer: str) -> str | None:
    """Why a free-text answer cannot be used, or None when it can."""
    bad = NOT_ONE_LINE.search(answer)
    if bad:
        return (
            f"{question} {answer!r} must be one line of printable text, "
            f"without U+{ord(bad.group()):04X}"
        )
    tag = JINJA_TAG.search(answer)
    if tag:
        return (
            f"{question} {answer!r} must not hold {tag.group()!r}: cookiecutter (and so cruft "
            "update) renders an answer it is given back as Jinja"
        )
    if question == "project_name" and not answer.strip():
        return f"{question} {answer!r} must not be empty"
    return None


def problems(answers: dict[str, object]) -> list[str]:
    """Every rule the answers break, one line each; empty when they are all fine."""
    found = []
    for question in FREE_TEXT:
        problem = text_problem(question, str(answers.get(question, "")))
        if problem:
            found.append(problem)
    name = str(answers.get("project_name", ""))
    slug = str(answers.get("project_slug", ""))
    package = str(answers.get("package_name", ""))
    if not DISTRIBUTION_NAME.fullmatch(slug) and not ASCII_LETTER_OR_DIGIT.search(name):
        found.append(
            f"project_slug {slug!r}: the project_name {name!r} has no ASCII letter or digit "
            "to make a slug of; answer project_slug yourself (ASCII letters, digits and '-', "
            "e.g. project_slug=my-service)"
        )
    elif not DISTRIBUTION_NAME.fullmatch(slug):
        found.append(
            f"project_slug {slug!r} is not a valid distribution name: use letters, digits, "
            "'-', '_' or '.', starting and ending with a letter or digit"
        )
    if not package.isidentifier() or not package.isascii() or not package[:1].isalpha():
        found.append(
            f"package_name {package!r} is not a Python identifier: use ASCII letters, "
            "digits and '_', starting with a letter"
        )
    elif keyword.iskeyword(package) or keyword.issoftkeyword(package):
        found.append(f"package_name {package!r} is a Python keyword: choose another name")
    elif package in sys.stdlib_module_names:
        found.append(
            f"package_name {package!r} shadows the standard-library module of that name: "
            "choose another name"
        )
    elif package != package.lower():
        found.append(f"package_name {package!r} must be lower case (PEP 8 package names)")
    return found


def read_answers(argv: list[str]) -> dict[str, object]:
    text = argv[1] if len(argv) > 1 else RENDERED_ANSWERS
    answers = json.loads(text)
    if not isinstance(answers, dict):
        raise SystemExit("error: the hook expected the answers as a JSON object")
    return answers


def main(argv: list[str]) -> int:
    found = problems(read_answers(argv))
    for line in found:
        print(f"error: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
