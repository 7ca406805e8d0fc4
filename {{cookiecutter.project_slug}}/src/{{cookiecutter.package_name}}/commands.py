"""Commands of `python -m <package>` that features add beside `serve` (the `token` command of
the query_token auth): each names its arguments and runs with the settings."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Command"]

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Command(Generic[S]):
    """One subcommand; `run` gets its parsed arguments and the settings, and returns the exit
    status."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, S], int]
