"""The people of the console (migrations 0009 and 0013): users and their memberships
(users.py, members.py), invitations (invitations.py),
console sessions and failed sign-ins (sessions.py), who created each key (keys.py); the
tables in schema.py."""
