"""The HTTP scoring service: FastAPI app, inference engines, history store look-ups, Prometheus metrics."""
