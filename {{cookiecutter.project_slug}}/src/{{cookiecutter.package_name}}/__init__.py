"""The service package; its name and description are in `about.json` (see `about.py`)."""

__version__ = "0.1.0"
