"""One module per target format; see ``exporters.base`` for the format table."""
