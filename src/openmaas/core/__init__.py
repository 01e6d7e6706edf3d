"""The sans-I/O core: canonical types, errors, ids and policies. Imports nothing of the project."""
