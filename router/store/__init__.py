"""The database: tables, migrations and repositories. Never on the request path."""
