"""The ledger's direct writers: a batch through the database driver itself."""
