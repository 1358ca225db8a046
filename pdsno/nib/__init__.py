"""The Network Information Base: PDSNO's shared state in PostgreSQL (or SQLite)."""
