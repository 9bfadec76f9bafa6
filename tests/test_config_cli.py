"""Hostile or broken configurations through the real command (issue 9, item 7): ``mediamoderation
check-config`` and the commands that start the service end with exit code 2 and the key path of every
problem, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from service.cli import EXIT_CONFIG

REPO = Path(__file__).resolve().parent.parent


def base_config(tmp_path: Path) -> dict:
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n" + "ab" * 20 + ",,example,e-1\n")
    return {
        "service": {"user_agent": "mediamoderation-test/0.1 (ts@example.org)", "shutdown_grace": 1},
        "http": {"host": "127.0.0.1", "port": 0},
        "source": {"eventstreams": {"url": "http://127.0.0.1:9/v2/stream/mediawiki.recentchange"}},
        "wikis": [{"id": "testwiki", "api_url": "http://127.0.0.1:9/w/api.php"}],
        "banks": {"list": [{"name": "b", "path": "bank.csv", "category": "child-protection"}]},
        "actions": {"notify": {"sender": "mm@example.org", "recipients": ["ts@example.org"]}},
        "store": {"path": "store.sqlite3"},
    }


def command(args: list[str], cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MM_CLI_")}
    return subprocess.run([sys.executable, "-m", "service", *args], capture_output=True, text=True, cwd=cwd,
                          env={**environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=timeout)


def assert_refused(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == EXIT_CONFIG, (result.returncode, result.stderr)
    for text in expected:
        assert text in result.stderr, (text, result.stderr)


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def with_(key: str, value: object) -> Callable[[dict, Path], None]:
    def change(data: dict, tmp_path: Path) -> None:
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node[part][0] if part == "wikis" else node.setdefault(part, {})
        node[leaf] = value
    return change


def bad_bank(data: dict, tmp_path: Path) -> None:
    (tmp_path / "bank.csv").write_text("hash,category,source,id\n" + "ab" * 20 + ",,x,1\n" + "ab" * 19 + ",,x,2\n")


CASES: dict[str, tuple[Callable[[dict, Path], None], tuple[str, ...]]] = {
    "malformed-bank": (bad_bank, ("banks.list[0].path: ", "bank.csv:3: hash must be 40 (SHA-1)")),
    "unset-env-secret": (with_("photodna", {"enabled": True, "key": {"env": "MM_CLI_UNSET"}}),
                         ("photodna.key: no secret available: environment variable MM_CLI_UNSET is not set",)),
    "missing-secret-file": (with_("actions.takedown.auth", {"username": "A@b", "password": {"file": "nope"}}),
                            ("actions.takedown.auth.password: no secret available: file nope cannot be read",)),
    "nan-fetch-timeout": (with_("fetch.timeout", float("nan")), ("fetch.timeout: must be a finite number, got nan",)),
    "nan-event-deadline": (with_("pipeline.event_deadline", float("nan")),
                           ("pipeline.event_deadline: must be a finite",)),
    "inf-event-deadline": (with_("pipeline.event_deadline", float("inf")),
                           ("pipeline.event_deadline: must be a finite number, got inf",)),
    "nan-shutdown-grace": (with_("service.shutdown_grace", float("nan")),
                           ("service.shutdown_grace: must be a finite",)),
    "http-photodna": (with_("photodna.url", "http://api.microsoftmoderator.com/photodna/v1.0/Match"),
                      ("photodna.url: must be an https:// URL",)),
    "http-wiki-api": (with_("wikis.api_url", "http://commons.wikimedia.org/w/api.php"),
                      ("wikis[0].api_url: must be an https:// URL",)),
    "http-eventstreams": (with_("source.eventstreams.url", "http://stream.wikimedia.org/v2/stream/recentchange"),
                          ("source.eventstreams.url: must be an https:// URL",)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_check_config_refuses(tmp_path: Path, case: str) -> None:
    change, expected = CASES[case]
    data = base_config(tmp_path)
    change(data, tmp_path)
    result = command(["check-config", str(write(tmp_path, data))], tmp_path)
    assert_refused(result, f"configuration {tmp_path / 'config.yaml'} is invalid:", *expected)


def test_check_config_accepts_loopback_http_and_available_secrets(tmp_path: Path) -> None:
    data = base_config(tmp_path)
    (tmp_path / "key").write_text("k\n")
    data["photodna"] = {"enabled": True, "url": "http://localhost:9/Match", "key": {"file": "key"}}
    data["actions"]["notify"]["smtp"] = {"host": "127.0.0.1", "username": "u", "password": {"env": "MM_CLI_PW"}}
    result = command(["check-config", str(write(tmp_path, data))], tmp_path, env={"MM_CLI_PW": "s3cr3t-value"})
    assert result.returncode == 0, result.stderr
    assert "OK (1 wiki(s), 1 bank(s))" in result.stdout
    assert "s3cr3t-value" not in result.stdout + result.stderr


def test_non_utf8_config(tmp_path: Path) -> None:
    path = write(tmp_path, base_config(tmp_path))
    path.write_bytes(path.read_bytes().replace(b"mediamoderation-test", b"mediamod\xe9ration-test"))
    result = command(["check-config", str(path)], tmp_path)
    assert_refused(result, "<file>: ", "is not UTF-8 text: byte 0xe9 at offset")


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    path = write(tmp_path, base_config(tmp_path))
    bomb = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    bomb += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    path.write_text(path.read_text() + "x_bomb:\n" + "".join(f"  {line}\n" for line in bomb))
    started = time.monotonic()
    result = command(["check-config", str(path)], tmp_path, timeout=60)
    elapsed = time.monotonic() - started
    assert_refused(result, "<file>: refused", "once aliases are expanded")
    assert elapsed < 20, f"{elapsed:.1f} s (the interpreter's start-up included)"  # was > 60 s of CPU


def test_duplicate_keys_reported_with_the_other_problems(tmp_path: Path) -> None:
    data = base_config(tmp_path)
    data["fetch"] = {"timeout": float("nan")}
    bad_bank(data, tmp_path)
    path = write(tmp_path, data)
    path.write_text(path.read_text().replace("  shutdown_grace: 1\n", "  shutdown_grace: 1\n  shutdown_grace: 2\n"))
    result = command(["check-config", str(path)], tmp_path, env={})
    assert_refused(result, "service.shutdown_grace: duplicate key: set on line 3 and again on line 4",
                   "fetch.timeout: must be a finite number", "banks.list[0].path: ")


def busy_port() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


@pytest.mark.parametrize("args", [["run"], ["replay", "--since", "2026-01-01T00:00:00Z"],
                                  ["backfill", "--wiki", "testwiki"]], ids=lambda a: a[0])
def test_port_in_use_is_one_clear_line(tmp_path: Path, args: list[str]) -> None:
    sock, port = busy_port()
    with sock:
        data = base_config(tmp_path)
        data["http"]["port"] = port
        # replay and backfill serve HTTP only on --metrics-port (so that they run beside `run`)
        extra = [] if args[0] == "run" else ["--metrics-port", str(port)]
        result = command([*args, *extra, "-c", str(write(tmp_path, data))], tmp_path)
    assert_refused(result)
    lines = [line for line in result.stderr.splitlines() if str(port) in line]
    assert lines == [f"error: http.port: port {port} on 127.0.0.1 is already in use (another process listens there)"]


def test_run_refuses_unset_secret_and_malformed_bank(tmp_path: Path) -> None:
    data = base_config(tmp_path)
    data["actions"]["notify"]["smtp"] = {"host": "127.0.0.1", "username": "u", "password": {"env": "MM_CLI_UNSET"}}
    result = command(["run", "-c", str(write(tmp_path, data))], tmp_path)
    assert_refused(result, "actions.notify.smtp.password: no secret available: environment variable MM_CLI_UNSET")

    del data["actions"]["notify"]["smtp"]
    bad_bank(data, tmp_path)
    result = command(["run", "-c", str(write(tmp_path, data))], tmp_path)
    assert_refused(result, "error: banks.list: ", "bank.csv:3: hash must be 40")


def test_scan_refuses_a_malformed_bank(tmp_path: Path) -> None:
    data = base_config(tmp_path)
    bad_bank(data, tmp_path)
    (tmp_path / "some.bin").write_bytes(b"x")
    result = command(["scan", "-c", str(write(tmp_path, data)), str(tmp_path / "some.bin")], tmp_path)
    assert_refused(result, "error: banks.list: ", "bank.csv:3: hash must be 40")
