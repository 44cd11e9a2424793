"""The store format: layout, metadata, codec, chunk reads, the writer, the read-only reader, check."""
