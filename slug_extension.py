"""The slugifier of slug.jinja, given to cookiecutter as the global `slug_of`.

copier.yml imports the macro itself (copier renders its questions with a loader rooted at the
template); cookiecutter renders cookiecutter.json with no loader, but imports the extensions it
names from the template's folder (cookiecutter and cruft put it on sys.path while they render),
so this extension is how cookiecutter.json reaches the same one macro. It is not part of the
generated project.
"""

from __future__ import annotations

import sys
from importlib.machinery import PathFinder
from pathlib import Path

from jinja2 import Environment, FileSystemLoader
from jinja2.ext import Extension

MACROS = "slug.jinja"


def template_folder() -> Path:
    """The folder of the template being rendered now. Python keeps the first copy of this module
    it imported (one process may render several copies of the template: the tests, cruft, the
    bench's old revision), and that copy's folder may be gone. The engines append the folder of
    the template they render to sys.path while they render, so the last entry that holds this
    module is that template's."""
    spec = PathFinder.find_spec(__name__.rpartition(".")[2], list(reversed(sys.path)))
    origin = spec.origin if spec is not None and spec.origin else __file__
    return Path(origin).resolve().parent


class ProjectSlugExtension(Extension):
    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        loader = FileSystemLoader(template_folder())
        macros = Environment(loader=loader).get_template(MACROS).module
        environment.globals["slug_of"] = macros.slug_of  # type: ignore[attr-defined]
