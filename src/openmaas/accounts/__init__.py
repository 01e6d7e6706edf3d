"""Who is calling and who may: organizations, API keys, authentication, sealed secrets."""
