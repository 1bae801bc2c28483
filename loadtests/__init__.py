"""Locust load tests with SLO verdicts (``batchgate loadtest``)."""
