"""A real, throw-away MediaWiki (Debian's 1.39 package) for tests.

``MediaWikiServer`` installs a fresh SQLite wiki into a temporary directory and serves it with PHP's
built-in web server.  Nothing global is touched: MediaWiki finds the wiki's settings through the
``MW_CONFIG_FILE`` environment variable (honoured by 1.39's ``wfDetectLocalSettingsFile``), and the
document root is a directory of symlinks to ``/usr/share/mediawiki`` plus a real ``images`` directory,
so uploaded originals are served as static files.

``MediaWikiClient`` is a small synchronous Action API client (bot-password login, upload, imageinfo,
delete) that also turns the wiki's own upload log into Wikimedia-EventStreams-shaped
``mediawiki.recentchange`` events.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

MEDIAWIKI_DIR = Path("/usr/share/mediawiki")
CONVERT = "/usr/bin/convert"
USER_AGENT = "mediamoderation-tests/0.1 (https://example.invalid/mediamoderation; test suite) requests"
FULL_GRANTS = "basic,highvolume,uploadfile,uploadeditmovefile,delete,editpage,createeditmovepage"
NODELETE_GRANTS = "basic,highvolume,uploadfile,uploadeditmovefile,editpage,createeditmovepage"
FILE_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "webp", "svg", "tif", "tiff", "bmp",
                   "webm", "ogv", "ogg", "oga", "flac", "wav", "mp3", "mp4", "pdf", "djvu")
GHOSTSCRIPT = "/usr/bin/gs"  # PdfHandler renders PDF pages with it (Debian ghostscript)
PDFINFO = "/usr/bin/pdfinfo"  # and reads page counts with poppler-utils
# MediaWiki core's DjVuHandler renders DjVu pages with Debian's djvulibre-bin: ddjvu renders (PPM, made JPEG by
# ImageMagick), djvudump reads the page count and sizes, djvutxt the text layer.
DDJVU, DJVUDUMP, DJVUTXT = "/usr/bin/ddjvu", "/usr/bin/djvudump", "/usr/bin/djvutxt"
# Bot passwords must match /^[0-9a-w]{32,}$/ (BotPassword::canonicalizeLoginData), not any 32 chars.
_BOT_PASSWORD_ALPHABET = "0123456789abcdefghijklmnopqrstuvw"


class MediaWikiUnavailable(RuntimeError):
    """php, Debian's mediawiki package or ImageMagick is missing, or the wiki could not start."""


class MediaWikiApiError(RuntimeError):
    """The Action API answered with an error object (``code`` is MediaWiki's error code)."""

    def __init__(self, code: str, info: str, action: str) -> None:
        super().__init__(f"MediaWiki API {action}: {code}: {info}")
        self.code = code
        self.info = info


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the caller must cope with the small race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def missing_prerequisites() -> list[str]:
    """What this machine lacks to run the test wiki (empty when everything is there)."""
    missing = []
    if shutil.which("php") is None:
        missing.append("php (Debian packages php-cli php-sqlite3 php-intl php-mbstring php-xml php-gd)")
    if not (MEDIAWIKI_DIR / "maintenance" / "install.php").is_file():
        missing.append(f"Debian package mediawiki ({MEDIAWIKI_DIR}/maintenance/install.php)")
    if not Path(CONVERT).exists():
        missing.append(f"imagemagick ({CONVERT})")
    return missing


def _bot_password() -> str:
    return "".join(secrets.choice(_BOT_PASSWORD_ALPHABET) for _ in range(32))


def _mw_timestamp(iso: str) -> datetime:
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


class MediaWikiClient:
    """Synchronous Action API client logged in with a bot password (``user`` is ``Name@appid``)."""

    def __init__(self, api_url: str, user: str, password: str, *, timeout: float = 60.0) -> None:
        self.api_url = api_url
        self.user = user
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        self._lock = threading.Lock()
        self._csrf: str | None = None
        self._siteinfo: dict[str, Any] | None = None
        self._offsets = 0
        token = self.get(action="query", meta="tokens", type="login")["query"]["tokens"]["logintoken"]
        result = self.post(action="login", lgname=user, lgpassword=password, lgtoken=token)["login"]
        if result.get("result") != "Success":
            raise MediaWikiApiError("login-failed", str(result), "login")

    # -- transport -----------------------------------------------------------------------------
    def _call(self, method: str, params: dict[str, Any], files: dict[str, Any] | None = None) -> dict:
        params = {"format": "json", "formatversion": "2", **params}
        with self._lock:
            if method == "GET":
                response = self.session.get(self.api_url, params=params, timeout=self.timeout)
            else:
                response = self.session.post(self.api_url, data=params, files=files, timeout=self.timeout)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        if "error" in body:
            error = body["error"]
            raise MediaWikiApiError(error.get("code", "?"), error.get("info", ""), str(params.get("action")))
        return body

    def get(self, **params: Any) -> dict:
        return self._call("GET", params)

    def post(self, files: dict[str, Any] | None = None, **params: Any) -> dict:
        return self._call("POST", params, files)

    def csrf_token(self, *, refresh: bool = False) -> str:
        if self._csrf is None or refresh:
            self._csrf = self.get(action="query", meta="tokens")["query"]["tokens"]["csrftoken"]
        return self._csrf

    def post_with_token(self, files: dict[str, Any] | None = None, **params: Any) -> dict:
        try:
            return self.post(files, token=self.csrf_token(), **params)
        except MediaWikiApiError as exc:
            if exc.code != "badtoken":
                raise
            return self.post(files, token=self.csrf_token(refresh=True), **params)

    @property
    def siteinfo(self) -> dict[str, Any]:
        """``meta=siteinfo`` general section (server, servername, scriptpath, articlepath, wikiid...)."""
        if self._siteinfo is None:
            self._siteinfo = self.get(action="query", meta="siteinfo", siprop="general")["query"]["general"]
        return self._siteinfo

    # -- files ---------------------------------------------------------------------------------
    @staticmethod
    def file_title(name: str) -> str:
        return name if name.startswith("File:") else f"File:{name}"

    def upload(self, filename: str, data: bytes, comment: str = "") -> dict:
        """Upload (or overwrite) ``filename``; returns the API's ``upload`` object incl. ``imageinfo``."""
        result = self.post_with_token(
            files={"file": (filename, data, "application/octet-stream")},
            action="upload", filename=filename.removeprefix("File:"), comment=comment, ignorewarnings="1",
        )["upload"]
        if result.get("result") != "Success":
            raise MediaWikiApiError("upload-not-successful", str(result), "upload")
        return dict(result)

    def imageinfo(self, title: str, width: int | None = None) -> dict:
        """The ``query.pages[0]`` object: an ``imageinfo`` list, or ``missing``/``filemissing`` flags."""
        params: dict[str, Any] = {
            "action": "query", "prop": "imageinfo", "titles": self.file_title(title),
            "iiprop": "url|sha1|size|mime|mediatype|timestamp",
        }
        if width is not None:
            params["iiurlwidth"] = str(width)
        return dict(self.get(**params)["query"]["pages"][0])

    def delete(self, title: str, reason: str = "test") -> dict:
        """``action=delete``; raises ``MediaWikiApiError`` (e.g. ``permissiondenied``) on failure."""
        result = self.post_with_token(action="delete", title=self.file_title(title), reason=reason)
        return dict(result["delete"])

    # -- events --------------------------------------------------------------------------------
    def upload_log(self, title: str) -> list[dict]:
        """Upload log entries of ``title``, newest first."""
        entries = self.get(
            action="query", list="logevents", letype="upload", letitle=self.file_title(title),
            leprop="ids|title|type|user|timestamp|details|comment", lelimit="50",
        )["query"]["logevents"]
        return list(entries)

    def recentchange_event(
        self, title: str, *, log_id: int | None = None,
        topic: str = "eqiad.mediawiki.recentchange", partition: int = 0, offset: int | None = None,
    ) -> dict:
        """A ``mediawiki.recentchange`` event for an upload of ``title``, shaped like EventStreams'.

        Built from the wiki's own upload log entry (the newest, or ``log_id``) and its recentchanges
        row, so every URL and hash in it points at this wiki.  ``meta.topic/partition/offset`` are
        placeholders: an EventStreams server stamps its own.
        """
        title = self.file_title(title)
        entries = [e for e in self.upload_log(title) if log_id is None or e["logid"] == log_id]
        if not entries:
            raise LookupError(f"no upload log entry for {title!r} (log_id={log_id})")
        entry = entries[0]
        changes = self.get(
            action="query", list="recentchanges", rctitle=title, rctype="log", rclimit="50",
            rcprop="title|ids|timestamp|user|flags|loginfo|comment",
        )["query"]["recentchanges"]
        change = next((c for c in changes if c.get("logid") == entry["logid"]), None)
        site = self.siteinfo
        when = _mw_timestamp(entry["timestamp"])
        params = entry.get("params", {})
        img_timestamp = params.get("img_timestamp")
        if img_timestamp:
            img_timestamp = _mw_timestamp(img_timestamp).strftime("%Y%m%d%H%M%S")
        dbkey = title.replace(" ", "_")
        path = site["articlepath"].replace("$1", urllib.parse.quote(dbkey, safe=";@$!*(),/~:"))
        uri = site["server"] + path
        if offset is None:
            offset = self._offsets
            self._offsets += 1
        event: dict[str, Any] = {
            "$schema": "/mediawiki/recentchange/1.0.0",
            "meta": {
                "uri": uri,
                "request_id": str(uuid.uuid4()),
                "id": str(uuid.uuid4()),
                "dt": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "domain": site["servername"],
                "stream": "mediawiki.recentchange",
                "topic": topic,
                "partition": partition,
                "offset": offset,
            },
            "type": "log",
            "namespace": 6,
            "title": title,
            "title_url": uri,
            "comment": entry.get("comment", ""),
            "timestamp": int(when.timestamp()),
            "user": entry["user"],
            "bot": bool(change.get("bot", False)) if change else False,
            "log_id": entry["logid"],
            "log_type": "upload",
            "log_action": entry["action"],
            "log_params": {
                "img_sha1": params["img_sha1"],
                "img_timestamp": img_timestamp,
            },
            "log_action_comment": f"{entry['action']} [[{title}]]",
            "server_url": site["server"],
            "server_name": site["servername"],
            "server_script_path": site["scriptpath"],
            "wiki": site["wikiid"],
        }
        if change is not None:
            event["id"] = change["rcid"]
        return event


class MediaWikiServer:
    """A fresh wiki in a temporary directory, served by ``php -S`` on 127.0.0.1.

    ``start()`` installs it, creates two bot passwords (with and without ``delete``), serves it and
    waits until the API answers; ``stop()`` kills the server's process group and removes the directory.
    """

    host = "127.0.0.1"
    admin_user = "Admin"

    def __init__(
        self, *, root: Path | None = None, workers: int = 4, startup_timeout: float = 60.0,
        keep: bool = False,
    ) -> None:
        self._root_arg = root
        self.workers = workers
        self.startup_timeout = startup_timeout
        self.keep = keep
        self.root = Path("/nonexistent")
        self.port = 0
        self.admin_password = "Adm1n-" + secrets.token_hex(8)
        self.bot_user = f"{self.admin_user}@mediamod"
        self.bot_password = _bot_password()
        self.nodelete_user = f"{self.admin_user}@nodelete"
        self.nodelete_password = _bot_password()
        self._process: subprocess.Popen[bytes] | None = None
        self._client: MediaWikiClient | None = None

    # -- paths and URLs ------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api.php"

    @property
    def docroot(self) -> Path:
        return self.root / "www"

    @property
    def upload_dir(self) -> Path:
        return self.docroot / "images"

    @property
    def settings_file(self) -> Path:
        return self.root / "conf" / "LocalSettings.php"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def wiki_id(self) -> str:
        """The WikiMap id recentchange events carry in ``wiki`` (``$wgDBname`` for SQLite: "wiki")."""
        return str(self.client.siteinfo["wikiid"])

    @property
    def client(self) -> MediaWikiClient:
        if self._client is None:
            raise RuntimeError("MediaWikiServer is not started")
        return self._client

    def _env(self) -> dict[str, str]:
        return {**os.environ, "MW_CONFIG_FILE": str(self.settings_file)}

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        missing = missing_prerequisites()
        if missing:
            raise MediaWikiUnavailable("missing: " + "; ".join(missing)
                                       + " (`bash scripts/test.sh` installs them)")
        self.root = self._root_arg or Path(tempfile.mkdtemp(prefix="mediawiki-test-"))
        try:
            self._install()
            for attempt in range(3):
                self.port = free_port(self.host)
                self._write_extra_settings()
                if self._serve(last_attempt=attempt == 2):
                    break
            self._client = MediaWikiClient(self.api_url, self.bot_user, self.bot_password)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        if self._client is not None:
            self._client.session.close()
            self._client = None
        if not self.keep and self._root_arg is None and self.root.name.startswith("mediawiki-test-"):
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> MediaWikiServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _php(self, *args: str) -> None:
        done = subprocess.run(["php", *args], env=self._env(), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise MediaWikiUnavailable(f"php {' '.join(args[:1])} failed ({done.returncode}):\n"
                                       f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")

    def _install(self) -> None:
        for sub in ("db", "conf", "tmp", "deleted", "www/images"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for entry in MEDIAWIKI_DIR.iterdir():
            if entry.name not in ("LocalSettings.php", "images"):
                (self.docroot / entry.name).symlink_to(entry)
        self._php(
            str(MEDIAWIKI_DIR / "maintenance" / "install.php"), "--dbtype", "sqlite",
            "--dbpath", str(self.root / "db"), "--dbname", "wiki", "--server", "http://127.0.0.1",
            "--scriptpath", "", "--pass", self.admin_password, "--confpath", str(self.root / "conf"),
            "TestWiki", self.admin_user,
        )
        with self.settings_file.open("a") as settings:
            settings.write("\nrequire __DIR__ . '/TestSettings.php';\n")
        self._write_extra_settings()
        create = str(MEDIAWIKI_DIR / "maintenance" / "createBotPassword.php")
        for user, password, grants in ((self.bot_user, self.bot_password, FULL_GRANTS),
                                       (self.nodelete_user, self.nodelete_password, NODELETE_GRANTS)):
            appid = user.split("@", 1)[1]
            self._php(create, "--appid", appid, "--grants", grants, self.admin_user, password)

    def _write_extra_settings(self) -> None:
        extensions = ", ".join(f"'{ext}'" for ext in FILE_EXTENSIONS)
        (self.root / "conf" / "TestSettings.php").write_text(f"""<?php
$wgServer = "http://{self.host}:{self.port}";
$wgEnableUploads = true;
$wgUseImageMagick = true;
$wgImageMagickConvertCommand = "{CONVERT}";
$wgUploadDirectory = "{self.upload_dir}";
$wgUploadPath = "/images";
$wgDeletedDirectory = "{self.root / 'deleted'}";
$wgTmpDirectory = "{self.root / 'tmp'}";
$wgCacheDirectory = "{self.root / 'tmp'}";
$wgFileExtensions = [ {extensions} ];
if ( is_executable( "{GHOSTSCRIPT}" ) && is_executable( "{PDFINFO}" ) ) {{
    wfLoadExtension( 'PdfHandler' );
    $wgPdfProcessor = "{GHOSTSCRIPT}";
    $wgPdfPostProcessor = "{CONVERT}";
    $wgPdfInfo = "{PDFINFO}";
    $wgPdftoText = "/usr/bin/pdftotext";
}}
if ( is_executable( "{DDJVU}" ) && is_executable( "{DJVUDUMP}" ) ) {{
    $wgDjvuRenderer = "{DDJVU}";
    $wgDjvuDump = "{DJVUDUMP}";
    $wgDjvuTxt = "{DJVUTXT}";
    $wgDjvuPostProcessor = "{CONVERT} ppm:- jpg:-";  // the default, netpbm's pnmtojpeg, is not installed
}}
$wgMaxUploadSize = 1024 * 1024 * 1024;
$wgMaxImageArea = 1e8;
$wgTiffThumbnailType = [ 'jpg', 'image/jpeg' ];
$wgEnableBotPasswords = true;
$wgThumbnailScriptPath = "{{$wgScriptPath}}/thumb.php";
$wgRateLimits['renderfile'] = [];
$wgRateLimits['renderfile-nonstandard'] = [];
$wgJobRunRate = 0;
$wgShowExceptionDetails = true;
""")

    def _serve(self, *, last_attempt: bool) -> bool:
        """Start ``php -S`` and wait for the API; False when the port was taken (retry elsewhere)."""
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                ["php", "-d", "upload_max_filesize=1G", "-d", "post_max_size=1G", "-d", "memory_limit=1G",
                 "-S", f"{self.host}:{self.port}", "-t", str(self.docroot)],
                env={**self._env(), "PHP_CLI_SERVER_WORKERS": str(self.workers)},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + self.startup_timeout
        probe = f"{self.api_url}?action=query&meta=siteinfo&format=json"
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                text = self.log_path.read_text(errors="replace")
                self._process = None
                if "Address already in use" in text and not last_attempt:
                    return False
                raise MediaWikiUnavailable(f"php -S exited early on port {self.port}; log:\n{text[-4000:]}")
            try:
                answer = requests.get(probe, timeout=5, headers={"User-Agent": USER_AGENT})
                if answer.status_code == 200 and "query" in answer.json():
                    return True
                last_error = f"HTTP {answer.status_code}: {answer.text[:500]}"
            except (requests.RequestException, ValueError) as exc:
                last_error = repr(exc)
            time.sleep(0.05)
        text = self.log_path.read_text(errors="replace")
        raise MediaWikiUnavailable(
            f"MediaWiki at {self.api_url} not ready after {self.startup_timeout}s ({last_error}); "
            f"server log:\n{text[-4000:]}"
        )

    # -- convenience: the bot client -----------------------------------------------------------
    def new_client(self, user: str, password: str) -> MediaWikiClient:
        """Another logged-in client, e.g. ``new_client(nodelete_user, nodelete_password)``."""
        return MediaWikiClient(self.api_url, user, password)

    def upload(self, filename: str, data: bytes, comment: str = "") -> dict:
        return self.client.upload(filename, data, comment)

    def imageinfo(self, title: str, width: int | None = None) -> dict:
        return self.client.imageinfo(title, width)

    def delete(self, title: str, reason: str = "test") -> dict:
        return self.client.delete(title, reason)

    def recentchange_event(self, title: str, **kwargs: Any) -> dict:
        return self.client.recentchange_event(title, **kwargs)
