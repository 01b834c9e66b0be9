"""compose.yaml brought up in Docker (``./run test-compose``; not part of ``./run test``)."""
