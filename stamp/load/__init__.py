"""The load test's parts (``stamp loadtest``, ``scripts/bench.py``): the load driver,
the local stack it can start, the /metrics reader and the report."""
