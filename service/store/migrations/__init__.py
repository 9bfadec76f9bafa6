"""Alembic revisions of the store's schema (run by :mod:`service.store.migrate`, never by hand).

A schema change is a new module in ``versions/`` (``down_revision`` = the previous head) written with
``alembic.op`` so it runs on SQLite and PostgreSQL, plus the same change in :mod:`service.store.schema`;
``tests/store/test_migrations.py`` checks that the two agree on both engines.
"""
