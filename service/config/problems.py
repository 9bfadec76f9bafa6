"""The problems found while loading a configuration: the first one per key path, in the order found."""

from __future__ import annotations

from service.errors import ConfigError


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        path = path or "<root>"
        if all(p != path for p, _ in self.items):  # the first problem of a key is the one to fix
            self.items.append((path, message))


class ConfigFileError(ConfigError):
    """A :class:`ConfigError` that knows where each key was set: ``file:line:column`` or an environment variable."""

    def __init__(self, problems: list[tuple[str, str]], *, source: str, marks: dict[str, tuple[int, int]],
                 origins: dict[str, str] | None = None) -> None:
        super().__init__(problems)
        self.source = source
        self.marks = marks
        self.origins = origins or {}

    def where(self, key: str) -> str:
        """Where ``key`` (or, when it is not in the file, its nearest parent) was set; the file alone if nowhere."""
        path = key
        while path:
            if path in self.origins:
                return f"environment variable {self.origins[path]}"
            if path in self.marks:
                line, column = self.marks[path]
                return f"{self.source}:{line}:{column}"
            path = path[:max(path.rfind("."), path.rfind("["), 0)]
        return self.source

    def lines(self) -> list[str]:
        """One line per problem: ``where: key: message``."""
        return [f"{self.where(key)}: {key}: {message}" if self.source else f"{key}: {message}"
                for key, message in self.problems]


def problem_lines(exc: ConfigError) -> list[str]:
    """``file:line:column: key: message`` per problem (``key: message`` when the file is not known)."""
    if isinstance(exc, ConfigFileError):
        return exc.lines()
    return [f"{key}: {message}" for key, message in exc.problems]
