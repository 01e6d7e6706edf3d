"""Daily roll-ups of usage (migration 0011): the tables (schema.py), the roller that folds
usage records into them behind a durable watermark (roller.py), and what the console reads
(reads.py)."""
