"""The MediaWiki Action API: one client (:mod:`.client`) over an injectable transport (:mod:`.transport`).

Fetching, polling, backfill and takedowns all talk to wikis through :class:`MediaWikiClient`; the
takedown's file operations are in :mod:`.files`.
"""

from service.errors import WikiApiError
from service.mediawiki.client import MediaWikiClient, Page, RetryPolicy
from service.mediawiki.files import Account, ArchivedFile, FileVersion, WikiApi, db_key

__all__ = ["Account", "ArchivedFile", "FileVersion", "MediaWikiClient", "Page", "RetryPolicy", "WikiApi",
           "WikiApiError", "db_key"]
