"""The store: SQLAlchemy 2.x models, engine setup, migrations, save/load."""
