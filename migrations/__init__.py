"""Alembic migrations for the khod store (installed as the ``khod.migrations`` package)."""
