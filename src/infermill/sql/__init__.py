"""Light helpers shared by the SQL source and sink: connection URLs (credentials masked) and identifiers
(validated, quoted). Nothing here imports a database driver."""
