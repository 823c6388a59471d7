"""Helpers the SQL source and sink share: connection URLs (parsing, masking, ``password_env``) and SQL
identifiers (validation, quoting). Light modules: importing them imports no database driver."""
