"""What the server tells its operators: logs.py (JSON logs), metrics.py (``/metrics``),
traces.py (OpenTelemetry, the ``otel`` extra; imported only when traces are on)."""
