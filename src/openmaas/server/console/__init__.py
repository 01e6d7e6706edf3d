"""The console: its pages (pages.py: the machinery and the developer's pages; usage.py,
play.py, people.py, ops.py, overview.py), Jinja2 templates, static files (one stylesheet,
one small script: no build step, nothing from a CDN) and message catalogs, one JSON file per
language; i18n.py chooses the language and formats money and dates for it, charts.py draws
the SVG charts."""
