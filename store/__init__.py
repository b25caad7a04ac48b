"""Storage: SQLModel tables, engines and sessions, migrations, tenant-scoped helpers."""
