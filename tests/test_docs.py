"""The docs name only things that exist: config keys, commands, metrics, chart values and relative links.

Read: README.md, docs/*.md, the Helm chart's README, values files and NOTES.txt, and config.yaml.

* **Config keys** (``actions.takedown.mode``, ``wikis[].server_url``; in the chart ``config.http.port``) in
  Markdown code spans and in YAML comments, against the JSON Schema generated from the config model.  A key
  whose first part is a top-level value of the chart (``secrets.smtpPassword.existingSecret``) is checked
  against the chart's ``values.yaml`` and ``values.schema.json`` instead (either is enough when both have it).
* **Commands** ``mediamoderation <command> [subcommand] [--option ...]`` in code spans, code blocks and YAML
  comments, against the argparse parser.
* **Metrics** ``mediamoderation_…`` anywhere (and counters named without the prefix in a code span,
  ``outcomes_total{outcome}``), against the series a :class:`~service.metrics.Metrics`
  registry declares (counters with ``_total``, histograms with ``_bucket``/``_sum``/``_count``).
* **YAML examples** in Markdown that are a config (or a chart values file) use only existing keys.
* **Links**: every relative link in Markdown points at an existing file (and an existing heading for
  ``#anchor``), except the pages in :data:`PENDING_PAGES`.

Every problem is reported at once, as ``file:line: what``.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics_core import Metric

from service.cli.parser import build_parser
from service.config.reference import json_schema
from service.metrics import PREFIX, Metrics

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "mediamoderation"

# Pages other engineers are writing at the same time as the docs restructure: linked from the docs index
# already, they exist once their branches are merged.  The lead empties this set after the merge.
PENDING_PAGES: frozenset[str] = frozenset()

# Names that must not come back in the docs.
RETIRED = {
    "python -m service.web.review.auth hash": "use `mediamoderation reviewer hash-password`",
    "secrets.wikiUsername": "the chart has no such value",
}

KEY_RE = re.compile(r"(?<![\w./-])([a-z][A-Za-z0-9_]*(?:\[\d*\])?(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|\{[a-z_,]+\})"
                    r"(?:\[\d*\])?)+)(?![\w/-]|\.\w)")
COMMAND_RE = re.compile(r"(?<![\w./@:-])mediamoderation[ \t]+([a-z][a-z-]*)(?:[ \t]+([a-z][a-z-]*))?(?![\w.@/-])")
METRIC_RE = re.compile(rf"(?<![\w/]){PREFIX}_[a-z0-9_]*[a-z0-9_*]")
SHORT_COUNTER_RE = re.compile(r"^([a-z][a-z0-9_]*_total)(?:\{[^}]*\})?$")  # `outcomes_total{outcome}` in a code span
LINK_RE = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN_RE = re.compile(r"(`+)(.+?)\1")
FILE_SUFFIXES = frozenset({"yaml", "yml", "json", "md", "py", "txt", "csv", "sh", "sqlite3", "eml", "jpg", "jpeg",
                           "png", "toml", "lock", "tpl", "go", "html", "org", "com", "net", "io", "local", "svc"})


# --------------------------------------------------------------------------- what exists


def schema_paths(schema: dict[str, Any]) -> set[str]:
    """Every key path of the JSON Schema: ``a.b``, lists as ``a[].b``."""
    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    paths: set[str] = set()

    def walk(node: dict[str, Any], prefix: str) -> None:
        if "$ref" in node:
            walk(defs[node["$ref"].rsplit("/", 1)[-1]], prefix)
        for alternative in node.get("anyOf", []) + node.get("oneOf", []) + node.get("allOf", []):
            walk(alternative, prefix)
        if isinstance(node.get("items"), dict):
            paths.add(prefix + "[]")
            walk(node["items"], prefix + "[]")
        for name, child in node.get("properties", {}).items():
            path = f"{prefix}.{name}" if prefix else name
            paths.add(path)
            walk(child, path)

    walk(schema, "")
    return paths


def values_paths() -> set[str]:
    """The chart's value paths, from values.yaml (including keys shown in comments) and values.schema.json."""
    paths = schema_paths(json.loads((CHART / "values.schema.json").read_text()))

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                path = f"{prefix}.{key}" if prefix else str(key)
                paths.add(path)
                walk(child, path)
        elif isinstance(node, list):
            for child in node:
                walk(child, prefix + "[]")

    for name in ("values.yaml", "values-scaleout.yaml"):
        walk(yaml.safe_load((CHART / name).read_text()), "")
    return paths


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(p: argparse.ArgumentParser) -> set[str]:
    return {o for action in p._actions for o in action.option_strings}


def commands(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    """Each command and its subcommands (empty when it takes none)."""
    return {name: set(_subparsers(sub)) for name, sub in _subparsers(parser).items()}


def command_options(parser: argparse.ArgumentParser) -> dict[tuple[str, ...], set[str]]:
    """The options of every command and subcommand: ``("run",)``, ``("config", "show")``."""
    found: dict[tuple[str, ...], set[str]] = {}
    for name, sub in _subparsers(parser).items():
        found[(name,)] = _options(sub)
        for subname, subsub in _subparsers(sub).items():
            found[(name, subname)] = _options(subsub)
    return found


def option_problems(command: tuple[str, ...], rest: str, options: dict[tuple[str, ...], set[str]]) -> list[str]:
    """The ``--long`` options written after a command (up to a shell separator) that it does not take."""
    rest = re.split(r"\s(?:\||&&|;|#)|;", rest, maxsplit=1)[0]
    known = options.get(command, set())
    return [f"`mediamoderation {' '.join(command)}` has no option {flag}"
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest) if flag not in known]


def metric_names() -> set[str]:
    """Every sample name a registry can export, labelled series included before they have a child."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count"),
                "info": ("_info",)}
    names: set[str] = set()
    family: Metric
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
    return names


# --------------------------------------------------------------------------- what the docs name


def doc_files() -> list[Path]:
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "config.yaml"]
    files += sorted(CHART.glob("*.md")) + sorted(CHART.glob("values*.yaml")) + sorted((CHART / "ci").glob("*.yaml"))
    files += [CHART / "templates" / "NOTES.txt"]
    return [f for f in files if f.is_file()]


def code_texts(path: Path) -> Iterator[tuple[int, str, bool]]:
    """``(line number, text, is_code)`` of the parts of a file where keys and commands are written:
    Markdown code spans and fenced blocks (``is_code``) and its prose; YAML and text files: comments."""
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if path.suffix == ".md":
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            if fenced:
                yield number, line, True
                continue
            for match in CODE_SPAN_RE.finditer(line):
                yield number, match.group(2), True
            yield number, CODE_SPAN_RE.sub(" ", line), False
        elif path.suffix in (".yaml", ".yml"):
            if "#" in line:
                yield number, line[line.index("#") + 1:], True
        else:
            yield number, line, True


def _expand(token: str) -> list[str]:
    """``pipeline.concurrency.{fetch,act}`` -> both keys; list indexes become ``[]``."""
    token = re.sub(r"\[\d+\]", "[]", token)
    braces = re.search(r"\{([a-z_,]+)\}", token)
    if braces is None:
        return [token]
    return [x for part in braces.group(1).split(",")
            for x in _expand(token[:braces.start()] + part + token[braces.end():])]


def _is_module_or_file(token: str) -> bool:
    parts = token.split(".")
    if parts[-1].lower() in FILE_SUFFIXES:
        return True
    module = REPO / "service" / parts[1]
    return parts[0] == "service" and (module.with_suffix(".py").exists() or module.is_dir())


def key_problems(token: str, config: set[str], values: set[str]) -> list[str]:
    """What is wrong with a dotted name that looks like a config key or a chart value; [] for other names."""
    if _is_module_or_file(token):
        return []
    config_roots = {p.split(".")[0].split("[")[0] for p in config}
    values_roots = {p.split(".")[0].split("[")[0] for p in values}
    problems = []
    for key in _expand(token):
        root = key.split(".")[0].split("[")[0]
        if root == "config" and key.split(".")[1].split("[")[0] in config_roots:  # the chart's values.config
            key = key.split(".", 1)[1]
            root = key.split(".")[0].split("[")[0]
        kinds = [(name, paths) for name, paths, roots in (("config key", config, config_roots),
                                                           ("chart value", values, values_roots)) if root in roots]
        if kinds and not any(key in paths for _, paths in kinds):
            problems.append(f"unknown {' or '.join(name for name, _ in kinds)} `{key}`")
    return problems


def test_docs_name_only_existing_keys_commands_metrics_and_links() -> None:
    config = schema_paths(json_schema())
    values = values_paths()
    known_commands = commands(build_parser())
    options = command_options(build_parser())
    metrics = metric_names()
    problems: list[str] = []
    for path in doc_files():
        rel = path.relative_to(REPO).as_posix()
        text = path.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), 1):
            for retired, why in RETIRED.items():
                if retired in line:
                    problems.append(f"{rel}:{number}: `{retired}`: {why}")
            for name in METRIC_RE.findall(line):
                if name.endswith(("_", "*")):
                    if not any(m.startswith(name.rstrip("*")) for m in metrics):
                        problems.append(f"{rel}:{number}: no metric starts with `{name}`")
                elif name not in metrics:
                    problems.append(f"{rel}:{number}: unknown metric `{name}`")
        for number, part, is_code in code_texts(path):
            short = SHORT_COUNTER_RE.match(part.strip())
            if short and not short.group(1).startswith(PREFIX) and f"{PREFIX}_{short.group(1)}" not in metrics:
                problems.append(f"{rel}:{number}: unknown metric `{PREFIX}_{short.group(1)}`")
            if is_code:
                for token in KEY_RE.findall(part):
                    problems += [f"{rel}:{number}: {p}" for p in key_problems(token, config, values)]
                for match in COMMAND_RE.finditer(part):
                    command, sub = match.groups()
                    if command not in known_commands:
                        problems.append(f"{rel}:{number}: unknown command `mediamoderation {command}`")
                        continue
                    if known_commands[command] and sub and sub not in known_commands[command]:
                        problems.append(f"{rel}:{number}: unknown command `mediamoderation {command} {sub}`")
                        continue
                    name = (command, sub) if known_commands[command] and sub else (command,)
                    rest = part[match.end():] if len(name) == 2 or not sub else part[match.start(2):]
                    problems += [f"{rel}:{number}: {p}" for p in option_problems(name, rest, options)]
        if path.suffix == ".md":
            problems += link_problems(path, rel)
            for number, block in yaml_blocks(path):
                problems += [f"{rel}:{number}: {p}" for p in yaml_block_problems(block, config, values)]
    assert not problems, "the docs name things that do not exist:\n" + "\n".join(problems)


def yaml_blocks(path: Path) -> Iterator[tuple[int, Any]]:
    """The parsed ```yaml blocks of a Markdown file, with the line each starts on (unparsable ones skipped)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start: int | None = None
    for number, line in enumerate(lines, 1):
        if start is None and line.strip() == "```yaml":
            start = number
        elif start is not None and line.strip() == "```":
            try:
                yield start, yaml.safe_load("\n".join(lines[start:number - 1]))
            except yaml.YAMLError:
                pass
            start = None


def _tree_paths(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, child in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path
            yield from _tree_paths(child, path)
    elif isinstance(node, list):
        for child in node:
            yield from _tree_paths(child, prefix + "[]")


def yaml_block_problems(block: Any, config: set[str], values: set[str]) -> list[str]:
    """A YAML example that is (part of) a config.yaml or a chart values file may only use existing keys."""
    if not isinstance(block, dict) or not block:
        return []
    config_roots = {p.split(".")[0].split("[")[0] for p in config}
    values_roots = {p.split(".")[0].split("[")[0] for p in values}
    if set(block) <= config_roots:
        return [f"unknown config key `{p}` in a YAML example" for p in _tree_paths(block) if p not in config]
    if set(block) <= values_roots:
        problems = [f"unknown chart value `{p}` in a YAML example" for p in _tree_paths(block)
                    if p not in values and not p.startswith("config.")]
        if isinstance(block.get("config"), dict):
            problems += yaml_block_problems(block["config"], config, set())
        return problems
    return []


# --------------------------------------------------------------------------- links


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_\[\]()]|<[^>]+>", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            base = slug(line.lstrip("#"))
            n = 0
            while (candidate := base if n == 0 else f"{base}-{n}") in found:
                n += 1
            found.add(candidate)
    return found


def link_problems(path: Path, rel: str, root: Path = REPO) -> list[str]:
    problems = []
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        for target in LINK_RE.findall(CODE_SPAN_RE.sub("", line)):
            if re.match(r"^[a-z][a-z+.-]*:", target):  # https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            try:
                shown = resolved.relative_to(root).as_posix()
            except ValueError:
                problems.append(f"{rel}:{number}: link outside the repository: {target}")
                continue
            if shown in PENDING_PAGES:
                continue
            if not resolved.exists():
                problems.append(f"{rel}:{number}: broken link: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                problems.append(f"{rel}:{number}: no heading for #{anchor} in {shown}")
    return problems


# --------------------------------------------------------------------------- the checker itself


def test_the_checker_finds_what_it_should(tmp_path: Path) -> None:
    config = schema_paths(json_schema())
    values = values_paths()
    assert {"actions.takedown.mode", "wikis[].server_url", "review.reviewers[].password_hash.env",
            "banks.list[].pdq_threshold", "photodna.key"} <= config
    assert {"secrets.smtpPassword.existingSecret", "banks.files", "scaleOut.enabled"} <= values
    assert key_problems("actions.takedown.mode", config, values) == []
    assert key_problems("wikis[0].server_url", config, values) == []
    assert key_problems("pipeline.concurrency.{fetch,act}", config, values) == []
    assert key_problems("pipeline.concurrency.{fetch,bogus}", config, values) == [
        "unknown config key `pipeline.concurrency.bogus`"]
    assert key_problems("actions.takedown.modes", config, values) == [
        "unknown config key `actions.takedown.modes`"]
    assert key_problems("config.http.port", config, values) == []
    assert key_problems("config.http.bogus", config, values) == ["unknown config key `http.bogus`"]
    assert key_problems("secrets.wikiUsername", config, values) == ["unknown chart value `secrets.wikiUsername`"]
    assert key_problems("banks.files", config, values) == []  # a chart value named like a config section
    assert key_problems("banks.bogus", config, values) == ["unknown config key or chart value `banks.bogus`"]
    assert key_problems("service.web.review", config, values) == []  # a module, not a key
    assert key_problems("config.yaml", config, values) == []
    assert KEY_RE.findall("e.g. stream.wikimedia.org and `store.url: postgresql://x`") == \
        ["e.g", "stream.wikimedia.org", "store.url"]
    found = commands(build_parser())
    assert found["config"] == {"schema", "show", "reference"} and found["scan"] == set()
    options = command_options(build_parser())
    assert option_problems(("run",), " [-c x] [--since T] [--role all\\|worker]; foo --bogus", options) == []
    assert option_problems(("backfill",), " --wiki w --rescan", options) == [
        "`mediamoderation backfill` has no option --rescan"]
    assert "--raw" in options[("photodna", "check")]
    assert COMMAND_RE.findall("mediamoderation config show -c x; helm/mediamoderation -f; mediamoderation-banks") == \
        [("config", "show")]
    assert {"mediamoderation_outcomes_total", "mediamoderation_stage_duration_seconds_bucket",
            "mediamoderation_review_pending", "mediamoderation_build_info"} <= metric_names()
    assert "mediamoderation_outcomes_total_created" not in metric_names()
    assert SHORT_COUNTER_RE.match('outcomes_total{result="x"}') and not SHORT_COUNTER_RE.match("open_seconds")
    assert yaml_block_problems({"store": {"url": "x"}, "wikis": [{"id": "w", "server": "x"}]}, config, values) == [
        "unknown config key `wikis[].server` in a YAML example"]
    assert yaml_block_problems({"banks": {"existingSecret": "b"}, "config": {"http": {"prot": 1}}}, config, values) \
        == ["unknown config key `http.prot` in a YAML example"]
    assert yaml_block_problems({"apiVersion": "v1", "kind": "Secret"}, config, values) == []
    assert slug("How it works: `run` (the service)") == "how-it-works-run-the-service"
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [bad](#nope) [gone](missing.md) [web](https://x.example/a.md)\n")
    assert [p.split(": ", 1)[1] for p in link_problems(page, "page.md", root=tmp_path)] == [
        "no heading for #nope in page.md", "broken link: missing.md"]
