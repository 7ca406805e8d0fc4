"""The project's name and description, as they were answered when it was generated.

They are free text (quotes, backslashes, any script, emoji), so they live in `about.json`,
where JSON escaping holds any text, rather than in Python source, where a quote would flip
ruff's quote style and a fullwidth letter would be a lint error (RUF001).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

__all__ = ["DESCRIPTION", "NAME"]

_ABOUT = json.loads(Path(__file__).with_name("about.json").read_text(encoding="utf-8"))

NAME: Final[str] = _ABOUT["name"]
DESCRIPTION: Final[str] = _ABOUT["description"]
