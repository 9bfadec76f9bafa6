"""The problems found while loading a configuration: the first one per key path, in the order found."""

from __future__ import annotations


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        path = path or "<root>"
        if all(p != path for p, _ in self.items):  # the first problem of a key is the one to fix
            self.items.append((path, message))
