"""What is done about a match: notification emails, takedowns and the review queue."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import Field

from service.config.core import Secret
from service.config.values import Email, NonNegFloat, NonNegInt, PosFloat, PosInt


@dataclass(frozen=True)
class SmtpSection:
    host: str = ""
    port: Annotated[int, Field(ge=1, le=65535)] = 587
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: Secret = field(default_factory=Secret)
    timeout: float = 30.0


@dataclass(frozen=True)
class RetrySection:
    # backoff while SMTP fails.
    initial_delay: float = 5.0
    # backoff while SMTP fails.
    max_delay: float = 600.0


@dataclass(frozen=True)
class NotifySection:
    # email Trust & Safety on a match.
    enabled: bool = True
    # email addresses.
    sender: str = ""
    # email addresses.
    recipients: tuple[str, ...] = ()
    # `host`, `port` (587), `security` (`starttls`, `tls`, `none`), `username`, `password` (`{env:…}` or `{file:…}`),
    # `timeout`. Without it, notifications are written as `.eml` files to `outbox_dir` and a warning is logged.
    smtp: SmtpSection | None = None
    # where `.eml` files go without SMTP.
    outbox_dir: str = "./outbox"
    review_url: str | None = None  # base URL of the review queue, used for links in emails
    retry: RetrySection = field(default_factory=RetrySection)
    categories: tuple[CategoryNotifySection, ...] = ()  # per-category recipients (default: recipients)
    # seconds: the first match of a known hash (or from an uploader) is emailed at once; further ones within this
    # window go into one digest email sent when the window ends. 0 (default): every match gets its own email; 3600 is
    # a good start.
    group_window: NonNegFloat = 0.0
    # what makes matches one group: `hash` (the same bank entry), `uploader` (the same user on one wiki), or both.
    group_by: tuple[Literal["hash", "uploader"], ...] = ("hash", "uploader")
    # also email unscannable uploads (grouped per wiki like matches); they are review cases and counted anyway.
    unscannable: bool = False
    # send a daily summary email (counts by category and outcome, open cases, oldest unreviewed case).
    daily_summary: bool = False
    # hour of the day (UTC, 0-23) the daily summary is sent.
    daily_summary_hour: Annotated[int, Field(ge=0, le=23)] = 7


@dataclass(frozen=True)
class ActionsSection:
    notify: NotifySection = field(default_factory=NotifySection)
    takedown: TakedownSection = field(default_factory=lambda: TakedownSection())
    reporting: ReportingSection = field(default_factory=lambda: ReportingSection())


@dataclass(frozen=True)
class ReportingSection:
    """Report drafts and the preservation of removed files (see docs/reporting.md)."""

    # days the wiki's deleted-file archive entry of a removed file must be kept (the REPORT Act asks one year).
    preservation_days: PosInt = 365
    # days before the preservation period ends that a reminder email is sent.
    reminder_days: NonNegInt = 30


@dataclass(frozen=True)
class CategoryNotifySection:
    """Who is emailed about one category's matches (instead of ``actions.notify.recipients``)."""

    category: str = ""  # a category banks or PhotoDNA produce
    # recipients for one category's matches instead of `actions.notify.recipients`; a match of several categories goes
    # to the union; a category without a row gets the default list.
    recipients: tuple[Email, ...] = ()


@dataclass(frozen=True)
class WikiAuthSection:
    """The takedown account: a bot password (``User@Bot``) or an OAuth 2 owner-only access token."""

    # `bot-password` or `oauth2`. Required in `auto` mode; without it Confirm cannot delete (warning). One account for
    # every configured wiki.
    method: Literal["bot-password", "oauth2"] = "bot-password"
    username: str = ""  # bot-password login name, "User@BotName"
    # `{env: VAR}` or `{file: PATH}`: the bot password.
    password: Secret = field(default_factory=Secret)
    token: Secret = field(default_factory=Secret)  # OAuth 2 owner-only access token


@dataclass(frozen=True)
class TakedownSection:
    # off: never delete; review: delete when a reviewer confirms; dry-run: record and email what would be
    # deleted; auto: delete at once (concurrently with the email) for ``categories``.
    mode: Literal["off", "review", "dry-run", "auto"] = "review"
    # categories deleted automatically in `auto` (recorded in `dry-run`). Listing `terrorism` makes `check-config` warn.
    categories: tuple[str, ...] = ("child-protection",)
    # the deletion log reason (public unless suppressed).
    reason: str = "Matched a known-abuse hash list"
    tags: tuple[str, ...] = ()  # change tags for the deletion (must be defined on the wiki)
    suppress: bool = False  # also hide the deleted versions from administrators (needs suppressrevision)
    auth: WikiAuthSection | None = None
    # seconds per API request.
    timeout: PosFloat = 30.0
    # `maxlag` sent with every API request.
    maxlag: NonNegInt = 5
    # takedowns performed at the same time (requests to one wiki stay serial).
    concurrency: PosInt = 2
    retry: RetrySection = field(default_factory=lambda: RetrySection(initial_delay=10.0, max_delay=600.0))
    # in `auto` (and `dry-run`): a PDQ match deletes automatically only at or below this distance; farther ones go
    # to review with the reason shown.
    auto_max_distance: Annotated[int, Field(ge=0, le=256)] = 10
    # in `auto`: exact SHA-1 / MD5 matches delete automatically.
    auto_exact: bool = True
    # in `auto`: PhotoDNA matches delete automatically.
    auto_photodna: bool = True
    # per-category overrides of `auto_max_distance`, `auto_exact` and `auto_photodna`.
    rules: tuple[TakedownRuleSection, ...] = ()


@dataclass(frozen=True)
class TakedownRuleSection:
    """How confident a match of one category must be for an automatic takedown."""

    category: str = ""  # a category listed in `actions.takedown.categories`
    # PDQ distance at or below which this category's matches delete automatically (default: auto_max_distance).
    auto_max_distance: Annotated[int, Field(ge=0, le=256)] | None = None
    auto_exact: bool | None = None  # exact SHA-1 / MD5 matches delete automatically (default: auto_exact)
    auto_photodna: bool | None = None  # PhotoDNA matches delete automatically (default: auto_photodna)


@dataclass(frozen=True)
class ReviewerSection:
    # deprecated (kept for one release; warns at start): reviewers are now managed in the store with
    # `mediamoderation reviewer add`. Config-file reviewers sign in with the `admin` role. `password_hash` may be
    # empty only with `proxy_auth`.
    name: str = ""
    # argon2 hash (`mediamoderation reviewer hash-password`), inline or read once at start from `{file: PATH}` /
    # `{env: VAR}` (e.g. a mounted Kubernetes Secret); empty: proxy login only.
    password_hash: str | Secret = ""


@dataclass(frozen=True)
class ProxyAuthSection:
    header: str | None = None  # e.g. X-Remote-User set by a single-sign-on proxy; None: off
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")  # the header is believed only from these
    listed_only: bool = True  # the header's user must be one of review.reviewers
    # The header carrying the client's address (e.g. X-Forwarded-For), believed only from trusted_proxies;
    # None: the peer address is the client's (sign-in throttling counts failures per client address).
    client_header: str | None = None


@dataclass(frozen=True)
class ReviewSection:
    # serve the review queue at `/review/` (needs `http.enabled`).
    enabled: bool = True
    reviewers: tuple[ReviewerSection, ...] = ()
    proxy_auth: ProxyAuthSection = field(default_factory=ProxyAuthSection)
    # Secure `__Host-` cookies (browsers accept them over HTTPS and on localhost); turn off only for plain-HTTP testing
    # (warning).
    secure_cookies: bool = True
    session_idle: float = 1800.0  # seconds without a request before a session ends
    session_max: float = 43200.0  # seconds after login a session ends anyway
    escalate_recipients: tuple[Email, ...] = ()  # Escalate emails these (default: actions.notify.recipients)
    # blur of the default preview (at least 4: the preview must stay unrecognisable).
    blur_radius: Annotated[float, Field(ge=4)] = 12.0
    # queue rows per page.
    page_size: Annotated[int, Field(ge=1, le=500)] = 50
    # seconds a reviewer holds a case they opened; others see who holds it and are asked before acting on it.
    claim_ttl: Annotated[float, Field(ge=30, le=86400)] = 900.0
    # a match is suppressed when the upload's PDQ is within this distance of an allowlisted (dismissed) content's
    # PDQ for the same bank: re-encoded or resized copies of a false positive stay quiet.
    allowlist_pdq_distance: Annotated[int, Field(ge=0, le=64)] = 31
