"""Reading the config file: strict UTF-8, YAML with bounded alias expansion, duplicate keys reported.

PyYAML shares the node of an anchor between its aliases, so ``safe_load`` of a "billion laughs" document is
fast, but every later walk over the data (validation, the typed loader) expands it: a nine-level bomb is
387 million values.  :class:`BoundedLoader` counts, while composing, how many nodes the document would have
with every alias expanded, and refuses it once that passes :data:`MAX_NODES`; nesting deeper than
:data:`MAX_DEPTH` is refused the same way (before Python's recursion limit).  Both are far above any real
configuration (hundreds of nodes, depth under ten).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
import yaml.reader
from yaml.composer import ComposerError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from service.errors import ConfigError

MAX_NODES = 100_000  # nodes of the document with every alias expanded
MAX_DEPTH = 64  # nested mappings / sequences

FILE = "<file>"  # the key path of problems with the file as a whole


class DocumentTooLarge(ComposerError):
    """The document would expand past :data:`MAX_NODES` nodes or nest deeper than :data:`MAX_DEPTH`."""


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses documents whose alias-expanded size or depth is out of bounds."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.expanded = 0  # nodes composed so far, each alias counted as the full size of its anchor's node
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> its expanded size, once it is complete

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node: Node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                raise DocumentTooLarge(None, None, "an alias refers to a node that contains it (recursive alias)",
                                       mark)
            self._count(size, mark)
            return node
        mark = self.peek_event().start_mark
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise DocumentTooLarge(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
        before = self.expanded
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._count(1, mark)
        self._sizes[id(node)] = self.expanded - before
        return node

    def _count(self, n: int, mark: Any) -> None:
        self.expanded += n
        if self.expanded > MAX_NODES:
            raise DocumentTooLarge(None, None, f"more than {MAX_NODES} values once aliases are expanded "
                                   "(an alias bomb?)", mark)


def decode(data: bytes, name: str) -> str:
    """The file's text; a byte that is not UTF-8 is a :class:`ConfigError` naming its offset and line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError([(FILE, f"{name} is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset "
                                  f"{exc.start} (line {line}) cannot be decoded")]) from None


Marks = dict[str, tuple[int, int]]  # key path -> (line, column), 1-based, of the key (or item) in the file


def walk(root: Node | None) -> tuple[list[tuple[str, str]], Marks]:
    """Duplicate keys and the position of every key path.

    Duplicates are ``(key path, message)`` for every key given twice in one mapping, with both line numbers.
    Each node is visited once (a node shared through aliases is reported under its first path), so the
    cost is linear in the composed document, not in its expanded size.
    """
    found: list[tuple[str, str]] = []
    marks: Marks = {}
    seen: set[int] = set()
    stack: list[tuple[Node, str]] = [(root, "")] if root is not None else []
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            first_line: dict[str, int] = {}
            children: list[tuple[Node, str]] = []
            for key_node, value_node in node.value:
                if isinstance(key_node, ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = str(key_node.value)
                    line = key_node.start_mark.line + 1
                    sub = f"{path}.{key}" if path else key
                    marks.setdefault(sub, (line, key_node.start_mark.column + 1))
                    if key in first_line:
                        found.append((sub, f"duplicate key: set on line {first_line[key]} and again on line "
                                           f"{line} (only one may be given)"))
                    else:
                        first_line[key] = line
                    children.append((value_node, sub))
                else:
                    children.append((value_node, path))
            stack.extend(reversed(children))
        elif isinstance(node, SequenceNode):
            for i, v in enumerate(node.value):
                marks.setdefault(f"{path}[{i}]", (v.start_mark.line + 1, v.start_mark.column + 1))
            stack.extend(reversed([(v, f"{path}[{i}]") for i, v in enumerate(node.value)]))
    return found, marks


def duplicate_keys(root: Node | None) -> list[tuple[str, str]]:
    """``(key path, message)`` for every key given twice in one mapping (see :func:`walk`)."""
    return walk(root)[0]


def read_yaml(path: Path) -> tuple[Any, list[tuple[str, str]], Marks]:
    """Parse the file at ``path``: ``(data, problems, marks)``.

    Problems that leave nothing to validate (unreadable, not UTF-8, not YAML, too large) raise
    :class:`ConfigError`; duplicate keys are returned as problems, to be reported with the others.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([(FILE, f"cannot read {path}: {exc.strerror or exc}")]) from exc
    text = decode(raw, str(path))
    try:
        loader = BoundedLoader(text)  # the reader refuses non-printable characters here
    except yaml.reader.ReaderError as exc:
        exc.name = str(path)  # not "<unicode string>"
        raise ConfigError([(FILE, f"invalid YAML in {path}: {exc}")]) from None
    loader.name = str(path)  # the marks of every later error name the file
    try:
        root = loader.get_single_node()
        problems, marks = walk(root)
        data = loader.construct_document(root) if root is not None else None
    except DocumentTooLarge as exc:
        raise ConfigError([(FILE, f"refused {path}: {exc.problem}{_where(exc)}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([(FILE, f"invalid YAML in {path}: {exc}")]) from None
    except (ValueError, OverflowError) as exc:  # a tagged value PyYAML cannot build, e.g. !!timestamp 2001-13-45
        raise ConfigError([(FILE, f"invalid YAML value in {path}: {exc}")]) from None
    finally:
        loader.dispose()
    return data, problems, marks


def _where(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
