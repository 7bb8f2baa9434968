"""The control plane's database: SQLAlchemy Core tables, alembic migrations, the engine."""
