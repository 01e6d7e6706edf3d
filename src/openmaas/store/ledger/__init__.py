"""The ledger's log in the database: log.py (LedgerStore: commands as events and entries,
batched, optimistic or lock-first), snapshots.py (start-up from a snapshot of the state),
undo.py (an optimistic batch's decisions taken back from memory)."""
