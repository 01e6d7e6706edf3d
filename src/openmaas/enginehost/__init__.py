"""The engine host: the local models loaded once per machine, served to the gateway
workers over a Unix socket (app.py, wire.py; the workers' side is engines/hosted.py)."""
