"""The package version (``[project] version`` of pyproject.toml), below every layer so any entry point can print it."""

__version__ = "0.1.0"
