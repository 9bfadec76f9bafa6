"""What every review page handler shares: the request keys the middleware sets, and small response helpers."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from service.store.base import ReviewSession

_Key = getattr(web, "RequestKey", None)  # aiohttp >= 3.13; plain string keys before
SESSION_KEY: Any = _Key("review_session", object) if _Key else "review_session"
NEW_TOKEN_KEY: Any = _Key("review_new_token", str) if _Key else "review_new_token"
ROLE_KEY: Any = _Key("review_role", str) if _Key else "review_role"


def html(text: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html")


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def session(request: web.Request) -> ReviewSession:
    s = request[SESSION_KEY]
    assert isinstance(s, ReviewSession)
    return s


def is_admin(request: web.Request) -> bool:
    return bool(request.get(ROLE_KEY) == "admin")


def nav(request: web.Request) -> dict[str, Any]:
    """The signed-in reviewer's name, CSRF token and whether the admin pages are linked, for a page."""
    s = session(request)
    return {"user": s.reviewer, "csrf": s.csrf, "admin": is_admin(request)}
