"""The console's files: Jinja2 templates, static files (one stylesheet, one small script:
no build step, nothing from a CDN) and message catalogs, one JSON file per language;
i18n.py chooses the language and formats money and dates for it. Its routes are
server/routes/console.py."""
