"""The one CLI: ``-c`` on every command, ``--version``, exit codes, ``reviewer hash-password``, logs by terminal."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from service import __version__
from service.cli import EXIT_CONFIG, EXIT_MATCH, EXIT_OK, EXIT_UNSCANNABLE, build_parser, main
from service.cli.exits import combine, outcome_code
from service.cli.options import log_level
from service.config import config_from_dict
from service.logs import setup_logging
from service.web.review.auth import Auth
from tests.infra import images
from tests.terminal import Terminal

REPO = Path(__file__).resolve().parent.parent


def command(args: list[str], cwd: Path, *, stdin: str | None = None,
            module: str = "service") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd,
                          input=stdin, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)


def leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...],
                                                                                     argparse.ArgumentParser]:
    """Every runnable command (``run``, ``photodna check``, ``reviewer hash-password`` ...) and its parser."""
    out: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {path: parser}
    for name, child in subs[0].choices.items():
        out.update(leaf_parsers(child, (*path, name)))
    return out


# The smallest arguments each command needs besides -c (a new command must be added here, or the test fails).
REQUIRED = {
    ("run",): [], ("check-config",): [], ("scan",): ["x.jpg"], ("photodna", "check"): ["x.jpg"],
    ("replay",): ["--since", "2026-01-01T00:00:00Z"], ("backfill",): ["--wiki", "w"],
    ("reviewer", "hash-password"): [], ("report", "draft"): ["0" * 40],
    ("config", "schema"): [], ("config", "show"): [], ("config", "reference"): [],
    ("reviewer", "add"): ["carol"], ("reviewer", "list"): [], ("reviewer", "disable"): ["carol"],
    ("reviewer", "enable"): ["carol"], ("reviewer", "passwd"): ["carol"], ("reviewer", "role"): ["carol", "admin"],
    ("vpdq",): ["x.webm", "--id", "x"],
    ("bank", "list"): [], ("bank", "sync"): [], ("bank", "add"): ["b", "a" * 40], ("bank", "remove"): ["b", "a" * 40],
    ("bank", "import"): ["f.csv", "--bank", "b"], ("bank", "export"): ["b"],
    ("retro", "run"): ["--bank", "b"], ("bank", "quarantine", "list"): [],
    ("bank", "quarantine", "release"): ["1"],
}


def test_every_command_takes_dash_c_and_the_log_options() -> None:
    commands = leaf_parsers(build_parser())
    assert set(commands) == set(REQUIRED)
    for path, extra in REQUIRED.items():
        for flag in ("-c", "--config"):
            args = build_parser().parse_args([*path, flag, "some.yaml", *extra])
            assert args.config == "some.yaml", path
        args = build_parser().parse_args([*path, "-c", "x", "-vv", "--log-level", "WARNING", "--log-format", "json",
                                          *extra])
        assert (args.verbose, args.log_level, args.log_format) == (2, "warning", "json"), path


def test_log_level_is_case_insensitive_and_checked(capsys: pytest.CaptureFixture[str]) -> None:
    for given, level in (("INFO", "info"), ("Debug", "debug"), ("warn", "warning")):
        assert build_parser().parse_args(["run", "--log-level", given]).log_level == level
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["run", "--log-level", "loud"])
    assert exc.value.code == EXIT_CONFIG
    assert "unknown log level 'loud'" in capsys.readouterr().err


def test_version_comes_from_the_installed_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        expected = metadata.version("mediamoderation")
    except metadata.PackageNotFoundError:
        expected = __version__
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"mediamoderation {expected}"


def test_replay_help_shows_since_as_required(tmp_path: Path) -> None:
    usage = command(["replay", "--help"], tmp_path).stdout
    assert "(--since TIME | --offsets T:P:O,...)" in " ".join(usage.split())
    assert "[--since" not in usage
    result = command(["replay", "-c", str(REPO / "config.yaml")], tmp_path)
    assert result.returncode == EXIT_CONFIG
    assert "one of the arguments --since --offsets is required" in result.stderr


def test_backfill_end_before_start_is_a_usage_error(tmp_path: Path) -> None:
    result = command(["backfill", "-c", str(REPO / "config.yaml"), "--wiki", "x", "--start", "2020-01-01T00:00:00Z",
                      "--end", "2019-01-01T00:00:00Z"], tmp_path)
    assert result.returncode == EXIT_CONFIG
    assert "--end (2019-01-01T00:00:00Z) is before --start" in result.stderr


def test_positional_config_path_still_works_with_a_warning(tmp_path: Path) -> None:
    config = str(REPO / "config.yaml")
    old = command(["check-config", config], tmp_path)
    assert old.returncode == 0, old.stderr
    assert "warning: a positional config path is deprecated" in old.stderr and f"use -c {config}" in old.stderr
    new = command(["check-config", "-c", config], tmp_path)
    assert new.returncode == 0 and "deprecated" not in new.stderr
    assert new.stdout == old.stdout == ("actions.takedown.mode: off\n  child-protection: never deleted by the service\n"
                                        f"{config}: OK (1 wiki(s), 1 bank(s))\n")


def test_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("service: {log_level: loud}\nwikis: []\n")
    for args in (["check-config", "-c", str(bad)], ["scan", "-c", str(bad), "x.jpg"],
                 ["backfill", "-c", str(bad), "--wiki", "w"]):
        result = command(args, tmp_path)
        assert result.returncode == EXIT_CONFIG, (args, result.stderr)
        assert f"configuration {bad} is invalid" in result.stderr and "Traceback" not in result.stderr


def test_scan_exit_codes_a_match_wins_over_unscannable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    known = images.photo(9001)  # banks/example.csv (config.yaml's bank) holds this generated image's hashes
    match, clean, broken = tmp_path / "variant.jpg", tmp_path / "other.jpg", tmp_path / "broken.jpg"
    match.write_bytes(images.variants(known)["resized"])
    clean.write_bytes(images.jpeg_bytes(images.photo(4242)))
    broken.write_bytes(images.truncated_jpeg())
    config = str(REPO / "config.yaml")

    def scan(*files: Path) -> tuple[int, list[str]]:
        code = main(["scan", "-c", config, *map(str, files)])
        return code, [json.loads(line)["outcome"] for line in capsys.readouterr().out.splitlines()]

    code, outcomes = scan(broken, match)
    assert outcomes[0].startswith("unscannable:") and outcomes[1] == "match"
    assert code == EXIT_MATCH  # the unscannable file came first; the match still decides the exit code
    assert scan(match, broken)[0] == EXIT_MATCH
    assert scan(broken, clean)[0] == EXIT_UNSCANNABLE
    assert scan(clean)[0] == EXIT_OK


def test_exit_code_precedence() -> None:
    assert combine([outcome_code(o) for o in ("clean", "unscannable:too-small", "match", "error:io")]) == EXIT_MATCH
    assert combine([outcome_code(o) for o in ("clean", "error:io")]) == EXIT_UNSCANNABLE
    assert combine([4, 3]) == 3 and combine([4, 0]) == 4 and combine([]) == EXIT_OK


async def test_reviewer_hash_password_is_accepted_by_the_review_login(tmp_path: Path) -> None:
    password = "correct horse battery staple"
    result = command(["reviewer", "hash-password"], tmp_path, stdin=password + "\n")
    assert result.returncode == 0, result.stderr
    hashed = result.stdout.strip()
    assert hashed.startswith("$argon2") and password not in result.stdout
    old = command(["hash"], tmp_path, stdin=password + "\n", module="service.web.review.auth")
    assert old.returncode == 0 and old.stdout.strip().startswith("$argon2")
    assert "deprecated" in old.stderr and "mediamoderation reviewer hash-password" in old.stderr

    cfg = config_from_dict({
        "service": {"user_agent": "mediamoderation-test/0.1 (ts@example.org)"},
        "wikis": [{"id": "w", "api_url": "https://w.example.org/w/api.php"}],
        "actions": {"notify": {"enabled": False}},
        "review": {"reviewers": [{"name": "alice", "password_hash": hashed},
                                 {"name": "bob", "password_hash": old.stdout.strip()}]},
    })
    auth = Auth(cfg.review, store=None)  # type: ignore[arg-type]  # sign_in checks passwords only
    assert await auth.sign_in("alice", password, "192.0.2.1") == "ok"
    assert await auth.sign_in("bob", password, "192.0.2.1") == "ok"
    assert await auth.sign_in("alice", password + "!", "192.0.2.1") == "bad-password"

    short = command(["reviewer", "hash-password"], tmp_path, stdin="short\n")
    assert short.returncode == 1 and "at least 12 characters" in short.stderr and short.stdout == ""


def offline_config(tmp_path: Path) -> Path:
    """A service whose wiki refuses connections: it starts, logs its warnings and waits; SIGTERM stops it."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "service": {"user_agent": "mediamoderation-test/0.1 (ts@example.org)", "shutdown_grace": 1,
                    "log_level": "info"},
        "http": {"host": "127.0.0.1", "port": 0},
        "wikis": [{"id": "testwiki", "api_url": "http://127.0.0.1:9/w/api.php"}],
        "banks": {"list": []},
        "actions": {"notify": {"enabled": False}},
        "store": {"path": "store.sqlite3"},
    }))
    return path


def run_on_terminal(tmp_path: Path, *options: str) -> Terminal:
    term = Terminal(["backfill", "-c", str(offline_config(tmp_path)), "--wiki", "testwiki", *options], tmp_path)
    term.wait_for(lambda text: "service started" in text, 60)
    term.interrupt()
    assert term.finish(60) == 0
    return term


def test_logs_are_coloured_console_lines_on_a_terminal(tmp_path: Path) -> None:
    term = run_on_terminal(tmp_path)
    plain = term.plain()
    assert "WARNING  banks.list is empty: nothing can match" in plain
    assert "INFO     service started  source=backfill" in plain
    assert '{"ts"' not in plain
    assert "\x1b[33mWARNING" in term.text  # coloured
    assert "Traceback" not in plain


def test_log_format_json_on_a_terminal_gives_json(tmp_path: Path) -> None:
    term = run_on_terminal(tmp_path, "--log-format", "json")
    records = [json.loads(line) for line in term.plain().splitlines() if line.startswith("{")]
    messages = {r["msg"]: r for r in records}
    assert messages["banks.list is empty: nothing can match"]["level"] == "warning"
    assert messages["service started"]["source"] == "backfill"
    summary = next(r for r in records if r["msg"].startswith("backfill testwiki summary"))
    assert summary["listed"] == 0 and summary["complete"] is False


def test_logs_are_json_when_not_a_terminal_and_levels_follow_the_options(tmp_path: Path) -> None:
    config = offline_config(tmp_path)

    def stderr_of(*options: str) -> list[dict[str, object]]:
        proc = subprocess.Popen([sys.executable, "-m", "service", "backfill", "-c", str(config), "--wiki", "testwiki",
                                 *options], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.stderr is not None
        lines: list[dict[str, object]] = []
        for line in proc.stderr:  # the first line proves it started: ask it to stop, then read the rest
            lines.append(json.loads(line))
            if len(lines) == 1:
                proc.terminate()
        assert proc.wait(60) == 0
        return lines

    default = stderr_of()
    assert {"banks.list is empty: nothing can match", "service started"} <= {r["msg"] for r in default}
    quiet = stderr_of("-q")
    assert "banks.list is empty: nothing can match" in {r["msg"] for r in quiet}
    assert all(r["level"] in ("warning", "error") for r in quiet)
    upper = stderr_of("--log-level", "WARNING")
    assert upper and all(r["level"] in ("warning", "error") for r in upper)
    verbose = stderr_of("-v")
    assert "service started" in {r["msg"] for r in verbose}


def test_levels_from_config_and_options_combine_in_any_case() -> None:
    parse = build_parser().parse_args
    assert log_level(parse(["run"]), "INFO") == "info"  # service.log_level: INFO is accepted here
    assert log_level(parse(["run", "-v"]), "Info") == "debug"
    assert log_level(parse(["run", "-q"]), "info") == "warning"
    assert log_level(parse(["run", "-qqq"]), "info") == "error"
    assert log_level(parse(["run", "-q", "--log-level", "DEBUG"]), "error") == "debug"  # the flag wins
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        stream = io.StringIO()
        output = setup_logging("WARNING", "auto", stream)
        assert (output.level, output.format, output.interactive) == ("warning", "json", False)
        logging.getLogger("service.test").info("hidden")
        logging.getLogger("service.test").warning("shown", extra={"wiki": "w"})
        records = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [(r["msg"], r["wiki"]) for r in records] == [("shown", "w")]
        console = io.StringIO()
        setup_logging("info", "console", console)
        logging.getLogger("service.test").info("hello", extra={"title": "File:A b.jpg", "n": 3})
        text = console.getvalue()
        assert "INFO" in text and 'hello  title="File:A b.jpg" n=3' in text and "\x1b[" not in text  # no colour
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
