"""The people of the console (migration 0009): users and their memberships (users.py),
console sessions and failed sign-ins (sessions.py), who created each key (keys.py); the
tables in schema.py."""
