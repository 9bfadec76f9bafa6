from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from service.cli import main
from service.config import Secret, config_from_dict, load_config
from service.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def minimal(tmp_path: Path) -> dict:
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    return {
        "service": {"user_agent": "mediamoderation-test/0.1 (ts@example.org)"},
        "wikis": [{"id": "testwiki", "api_url": "http://127.0.0.1:1/api.php"}],
        "banks": {"list": [{"name": "b", "path": str(bank), "category": "child-protection"}]},
        "actions": {"notify": {"sender": "mm@example.org", "recipients": ["ts@example.org"]}},
        "store": {"path": str(tmp_path / "db.sqlite3")},
    }


def problems(data: dict, tmp_path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, base=tmp_path)
    return dict(info.value.problems)


def test_shipped_config_is_valid() -> None:
    cfg = load_config(REPO / "config.yaml")
    assert cfg.wikis[0].id == "commonswiki"
    assert "upload.wikimedia.org" in cfg.wikis[0].allowed_hosts
    assert cfg.actions.notify.smtp is None  # report-only: .eml outbox
    assert Path(cfg.banks.list[0].path).is_file()


def test_minimal_config_defaults(tmp_path: Path) -> None:
    cfg = config_from_dict(minimal(tmp_path), base=tmp_path)
    assert cfg.pipeline.concurrency.fetch == 8
    assert cfg.fetch.thumb_width == 330
    assert cfg.cpu_workers >= 1


def test_unknown_key_wrong_type_and_impossible_values(tmp_path: Path) -> None:
    data = minimal(tmp_path)
    data["pipeline"] = {"concurrency": {"fetch": -1, "thumbnail": "two"}, "queue_size": 0}
    data["bogus"] = 1
    data["actions"]["notify"]["recipients"] = ["not-an-address"]
    data["banks"]["list"].append({"name": "missing", "path": "nope.csv", "category": "terrorism"})
    found = problems(data, tmp_path)
    assert "unknown key" in found["bogus"]
    assert found["pipeline.concurrency.fetch"] == "must be >= 1, got -1"
    assert "integer" in found["pipeline.concurrency.thumbnail"]
    assert "pipeline.queue_size" in found
    assert "not an email address" in found["actions.notify.recipients[0]"]
    assert "does not exist" in found["banks.list[1].path"]


def test_user_agent_required_and_descriptive(tmp_path: Path) -> None:
    data = minimal(tmp_path)
    data["service"]["user_agent"] = "python-requests/2.31"
    assert "service.user_agent" in problems(data, tmp_path)
    del data["service"]["user_agent"]
    assert "required" in problems(data, tmp_path)["service.user_agent"]


def test_inline_secret_refused(tmp_path: Path) -> None:
    data = minimal(tmp_path)
    data["actions"]["notify"]["smtp"] = {"host": "localhost", "username": "u", "password": "hunter2"}
    found = problems(data, tmp_path)
    assert "secrets are not allowed" in found["actions.notify.smtp.password"]
    assert "hunter2" not in str(found)


def test_secret_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MM_TEST_SECRET", "from-env")
    assert Secret(env="MM_TEST_SECRET").get() == "from-env"
    f = tmp_path / "secret"
    f.write_text("from-file\n")
    assert Secret(file=str(f)).get() == "from-file"
    assert "from-env" not in repr(Secret(env="MM_TEST_SECRET"))


def test_check_config_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(minimal(tmp_path)))
    assert main(["check-config", str(good)]) == 0
    bad_data = minimal(tmp_path)
    bad_data["pipeline"] = {"concurrency": {"act": -3}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(bad_data))
    with pytest.raises(SystemExit) as info:
        main(["check-config", str(bad)])
    assert info.value.code == 2
    assert "pipeline.concurrency.act: must be >= 1, got -3" in capsys.readouterr().err


def test_check_config_on_unparseable_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("service: [unclosed\n")
    with pytest.raises(SystemExit) as info:
        main(["check-config", str(bad)])
    assert info.value.code == 2
    assert "invalid YAML" in capsys.readouterr().err


# ------------------------------------------------------------------------ issue 9, item 7: hostile config


def load_problems(path: Path, **checks: bool) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, **checks)
    return dict(info.value.problems)


def write_yaml(tmp_path: Path, data: dict, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_non_utf8_config_names_the_byte_offset_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    text = yaml.safe_dump(minimal(tmp_path), sort_keys=False).encode()
    cut = text.index(b"\n", text.index(b"\n") + 1) + 1  # the start of line 3
    path.write_bytes(text[:cut] + b"# caf\xe9\n" + text[cut:])
    found = load_problems(path)
    assert found == {"<file>": f"{path} is not UTF-8 text: byte 0xe9 at offset {cut + 5} (line 3) cannot be decoded"}


def test_utf8_with_a_byte_order_mark_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(minimal(tmp_path)).encode())
    assert load_config(path).wikis[0].id == "testwiki"


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1" + "0" * 400], ids=["nan", "inf", "-inf", "1e400"])
def test_every_float_setting_refuses_non_finite_values(tmp_path: Path, value: str) -> None:
    """Every float (duration, rate, ratio) in the tree, found from the dataclasses themselves."""
    import dataclasses
    import types
    import typing

    from service.config import Config

    def floats(cls: type, path: str) -> list[str]:
        out = []
        for name, tp in typing.get_type_hints(cls).items():
            if name == "path" and cls is Config:
                continue
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
                tp = args[0]
            if tp is float:
                out.append(f"{path}{name}")
            elif typing.get_origin(tp) is tuple and typing.get_args(tp)[0] is float:
                out.append(f"{path}{name}[0]")
            elif dataclasses.is_dataclass(tp):
                out += floats(tp, f"{path}{name}.")
        return out

    paths = floats(Config, "")
    assert {"fetch.timeout", "pipeline.event_deadline", "service.shutdown_grace",
            "photodna.rescan.retry_delays[0]", "actions.notify.smtp.timeout"} <= set(paths)
    data = minimal(tmp_path)
    for p in paths:  # a nested mapping for each path (optional sections included); lists get one item
        *parents, leaf = p.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        if leaf.endswith("[0]"):
            node[leaf[:-3]] = [value]
        else:
            node[leaf] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data).replace(f"'{value}'", value))  # unquoted: YAML's .nan, .inf, int
    found = load_problems(path)
    missing = [p for p in paths if not found.get(p, "").startswith("must be a finite number")]
    assert not missing, (missing, found)


def test_finite_floats_and_integers_still_load(tmp_path: Path) -> None:
    data = minimal(tmp_path)
    data["fetch"] = {"timeout": 2.5}
    data["pipeline"] = {"event_deadline": 60}
    cfg = config_from_dict(data, base=tmp_path)
    assert cfg.fetch.timeout == 2.5 and cfg.pipeline.event_deadline == 60.0


@pytest.mark.parametrize("key, url", [
    ("photodna.url", "http://api.microsoftmoderator.com/photodna/v1.0/Match"),
    ("wikis[0].api_url", "http://commons.wikimedia.org/w/api.php"),
    ("source.eventstreams.url", "http://stream.wikimedia.org/v2/stream/mediawiki.recentchange"),
    ("wikis[0].api_url", "http://127.0.0.1.example.org/w/api.php"),
    ("photodna.url", "http://10.0.0.1/Match"),
])
def test_plain_http_is_refused_off_loopback(tmp_path: Path, key: str, url: str) -> None:
    data = minimal(tmp_path)
    set_path(data, key, url)
    found = problems(data, tmp_path)
    assert found[key].startswith("must be an https:// URL"), found
    assert url in found[key]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "localhost", "LOCALHOST", "[::1]"])
def test_plain_http_to_loopback_stays_allowed(tmp_path: Path, host: str) -> None:
    data = minimal(tmp_path)
    for key in ("photodna.url", "wikis[0].api_url", "source.eventstreams.url"):
        set_path(data, key, f"http://{host}:8123/x")
    cfg = config_from_dict(data, base=tmp_path)
    assert cfg.photodna.url == f"http://{host}:8123/x"


def test_every_wiki_url_setting_is_checked(tmp_path: Path) -> None:
    """Any ``*_url`` of a wiki (api_url, server_url, and any added later) gets the same check."""
    import dataclasses

    from service.config import WikiSection
    from service.config.fields import check_wiki_urls
    from service.config.problems import _Problems

    extended = dataclasses.make_dataclass("ExtendedWiki", [("upload_url", str, "")], bases=(WikiSection,),
                                          frozen=True)
    found = _Problems()
    check_wiki_urls(found, "wikis[0]", extended(id="w", api_url="https://w.example/api.php",
                                                server_url="http://w.example", upload_url="http://up.example"))
    assert [p for p, _ in found.items] == ["wikis[0].server_url", "wikis[0].upload_url"]
    data = minimal(tmp_path)
    data["wikis"][0]["server_url"] = "http://commons.wikimedia.org"
    assert problems(data, tmp_path)["wikis[0].server_url"].startswith("must be an https:// URL")


def set_path(data: dict, key: str, value: object) -> None:
    *parents, leaf = key.replace("[0]", ".0").split(".")
    node: object = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})  # type: ignore[index]
    assert isinstance(node, dict)
    node[leaf] = value


def test_unset_and_unreadable_secrets_name_key_and_source_never_values(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MM_UNSET_SECRET", raising=False)
    monkeypatch.setenv("MM_EMPTY_SECRET", "")
    monkeypatch.setenv("MM_GOOD_SECRET", "correct-horse-battery")
    (tmp_path / "empty-secret").write_text("\n")
    data = minimal(tmp_path)
    data["actions"]["notify"]["smtp"] = {"host": "127.0.0.1", "username": "u", "password": {"env": "MM_UNSET_SECRET"}}
    data["actions"]["takedown"] = {"auth": {"username": "A@b", "password": {"file": str(tmp_path / "missing")}}}
    data["photodna"] = {"enabled": True, "key": {"env": "MM_EMPTY_SECRET", "file": str(tmp_path / "empty-secret")}}
    data["source"] = {"kafka": {"connection": {"sasl_password": {"env": "MM_GOOD_SECRET"}}}}
    path = write_yaml(tmp_path, data)
    assert load_config(path).photodna.key.env == "MM_EMPTY_SECRET"  # not checked unless asked
    found = load_problems(path, secrets=True)
    assert found["actions.notify.smtp.password"] == \
        "no secret available: environment variable MM_UNSET_SECRET is not set"
    assert found["actions.takedown.auth.password"] == \
        f"no secret available: file {tmp_path / 'missing'} cannot be read: No such file or directory"
    assert found["photodna.key"] == ("no secret available: environment variable MM_EMPTY_SECRET is empty and "
                                     f"file {tmp_path / 'empty-secret'} is empty")
    assert "source.kafka.connection.sasl_password" not in found
    assert "correct-horse-battery" not in str(found)
    monkeypatch.setenv("MM_UNSET_SECRET", "x")
    (tmp_path / "missing").write_text("pw")
    (tmp_path / "empty-secret").write_text("k")
    assert load_config(path, secrets=True).actions.notify.smtp is not None


def test_secrets_of_a_disabled_section_are_not_required(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MM_UNSET_SECRET", raising=False)
    data = minimal(tmp_path)
    data["photodna"] = {"enabled": False, "key": {"env": "MM_UNSET_SECRET"}}
    path = write_yaml(tmp_path, data)
    assert load_config(path, secrets=True).photodna.key.env == "MM_UNSET_SECRET"  # loads: not needed
    data["photodna"]["enabled"] = True
    path = write_yaml(tmp_path, data)
    assert load_problems(path, secrets=True)["photodna.key"] == \
        "no secret available: environment variable MM_UNSET_SECRET is not set"


def test_secret_file_that_is_not_utf8(tmp_path: Path) -> None:
    f = tmp_path / "secret"
    f.write_bytes(b"\xff\xfe")
    assert Secret(file=str(f)).get() is None
    assert Secret(file=str(f)).problem() == f"file {f} is not UTF-8 text"


def test_bank_files_are_parsed_by_the_bank_parser_with_line_numbers(tmp_path: Path) -> None:
    from service.config import BankSection
    from service.errors import BankError
    from service.matchers.banks import load_bank

    data = minimal(tmp_path)
    good = tmp_path / "good.csv"
    good.write_text("hash,category,source,id\n" + "ab" * 20 + ",,x,1\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("hash,category,source,id\n" + "ab" * 20 + ",,x,1\nnot-a-hash,,x,2\n")
    data["banks"]["list"] = [{"name": "good", "path": "good.csv", "category": "terrorism"},
                             {"name": "bad", "path": "bad.csv", "category": "terrorism"}]
    data["pipeline"] = {"queue_size": 0}
    path = write_yaml(tmp_path, data)
    assert "banks.list[1].path" not in load_problems(path)  # only when asked
    found = load_problems(path, bank_files=True)
    with pytest.raises(BankError) as info:
        load_bank(BankSection(name="bad", path=str(bad), category="terrorism"))
    assert found["banks.list[1].path"] == str(info.value)
    assert f"{bad}:3: hash must be" in found["banks.list[1].path"]
    assert "banks.list[0].path" not in found
    assert "pipeline.queue_size" in found  # reported together


def alias_bomb(depth: int) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, depth + 1)]
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_fast(tmp_path: Path) -> None:
    import time

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(minimal(tmp_path)) + "x_bomb:\n" + "".join(
        f"  {line}\n" for line in alias_bomb(9).splitlines()))
    started = time.process_time()
    found = load_problems(path, secrets=True, bank_files=True)
    spent = time.process_time() - started
    assert spent < 0.2, f"{spent:.3f} s of CPU"
    assert list(found) == ["<file>"]
    assert "more than 100000 values once aliases are expanded" in found["<file>"]


@pytest.mark.parametrize("text, message", [
    ("a: &a [1, *a]\n", "recursive alias"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 64 levels deep"),
    ("a: [" + ", ".join(["1"] * 100_001) + "]\n", "more than 100000 values"),
], ids=["recursive", "deep", "huge"])
def test_recursive_deep_and_huge_documents_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    found = load_problems(path)
    assert message in found["<file>"], found


def test_ordinary_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    data = minimal(tmp_path)
    text = yaml.safe_dump(data, sort_keys=False).replace("recipients:\n", "recipients: &staff\n")
    text += "review:\n  escalate_recipients: *staff\n  proxy_auth: &proxy\n    header: X-Remote-User\n" \
            "    <<: {listed_only: false}\n"
    path = tmp_path / "config.yaml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.review.escalate_recipients == ("ts@example.org",)
    assert cfg.review.proxy_auth.listed_only is False


def test_duplicate_keys_are_errors_with_path_and_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "service:\n"
        "  user_agent: 'mediamoderation-test/0.1 (ts@example.org)'\n"
        "  shutdown_grace: 5\n"
        "  shutdown_grace: 50\n"
        "wikis:\n"
        "  - id: testwiki\n"
        "    api_url: 'http://127.0.0.1:1/api.php'\n"
        "    id: otherwiki\n"
        f"banks: {{list: [{{name: b, path: {tmp_path / 'bank.csv'}, category: c}}]}}\n"
        "actions: {notify: {sender: mm@example.org, recipients: [ts@example.org]}}\n"
        "pipeline: {queue_size: 0}\n"
        "service: {}\n"
    )
    (tmp_path / "bank.csv").write_text("hash,category,source,id\n")
    found = load_problems(path)
    assert found["service.shutdown_grace"] == \
        "duplicate key: set on line 3 and again on line 4 (only one may be given)"
    assert found["wikis[0].id"] == "duplicate key: set on line 6 and again on line 8 (only one may be given)"
    assert found["service"] == "duplicate key: set on line 1 and again on line 12 (only one may be given)"
    assert "pipeline.queue_size" in found  # with the other problems


def test_port_in_use_is_a_config_error_naming_the_setting() -> None:
    import asyncio
    import socket

    from aiohttp import web

    from service.config import HttpSection
    from service.web.listen import listen

    async def attempt(port: int) -> None:
        runner = web.AppRunner(web.Application())
        await runner.setup()
        try:
            await listen(runner, HttpSection(host="127.0.0.1", port=port))
        finally:
            await runner.cleanup()

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError) as info:
            asyncio.run(attempt(port))
    assert info.value.problems == [("http.port", f"port {port} on 127.0.0.1 is already in use "
                                                 "(another process listens there)")]


@pytest.mark.parametrize("key, value, message", [
    ("wikis[0].api_url", "http://[::1", "must be an absolute http/https URL"),
    ("wikis[0].server_url", "http://[::1", "must be an absolute http/https URL"),
    ("photodna.key", {"env": "NOT-A-NAME"}, "env must be an environment variable name"),
    ("photodna.key", {"env": 12}, "photodna.key.env: must be a string, got 12"),
    ("photodna.key", {"env": "\ud800"}, "photodna.key.env: is not valid text (unpaired surrogate)"),
    ("photodna.key", {"file": "a\0b"}, "file is not a valid path (NUL character)"),
    ("photodna.key", {"file": "\ud800"}, "photodna.key.file: is not valid text (unpaired surrogate)"),
    ("store.path", "~no_such_user_zz/db.sqlite3", "cannot expand '~no_such_user_zz/db.sqlite3': no such user"),
    ("banks.list[0].path", "x" * 5000, "not a usable path"),
], ids=["ipv6-bracket", "server-ipv6-bracket", "env-name", "env-int", "env-surrogate", "file-nul",
        "file-surrogate", "tilde-user", "name-too-long"])
def test_hostile_values_are_problems_not_exceptions(tmp_path: Path, key: str, value: object, message: str) -> None:
    data = minimal(tmp_path)
    set_path(data, key, value)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8", errors="surrogatepass")
    found = load_problems(path, secrets=True, bank_files=True)
    if message.startswith(f"{key}."):  # a key inside the value: the message names it
        key, message = message.split(": ", 1)
    assert message in found[key], found


@pytest.mark.parametrize("text", ["\0\n", "service: !!timestamp 2001-13-45\n", "service: " + "1" * 5000 + "\n"],
                         ids=["nul", "bad-timestamp", "int-too-long"])
def test_unbuildable_yaml_is_a_file_problem(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert list(load_problems(path)) == ["<file>"]


def test_ingest_role_reports_a_port_in_use_the_same_way(tmp_path: Path) -> None:
    """``run --role ingest`` binds through the same helper (its broker is not needed to see that)."""
    import asyncio
    import socket

    from service.work import IngestService

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        data = minimal(tmp_path)
        data["http"] = {"host": "127.0.0.1", "port": port}
        cfg = config_from_dict(data, base=tmp_path)

        async def start() -> None:
            service = IngestService(cfg, make_source=lambda c, store, m: object())
            try:
                await service._start_http()
            finally:
                await service.http.close()

        with pytest.raises(ConfigError) as info:
            asyncio.run(start())
    assert info.value.problems[0][0] == "http.port" and str(port) in info.value.problems[0][1]
