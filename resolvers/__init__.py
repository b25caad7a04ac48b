"""Service functions, one module per domain. They take `(db, principal, ...)`, never commit."""
