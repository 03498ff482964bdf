"""The load test, in one package (``stamp loadtest``, ``scripts/bench.py``): the run
itself and its report assembly (``run``), the load driver, the local stack it can
start, the /metrics reader, the database helpers and the report."""
