"""Simulators of Stamp's peers for tests, the demo and the load test.

``registry`` (a gRPC RegistryService that validates like Project Origin's registry, with
fault injection) and ``wallet``. Import the submodule you need: each one pulls in its
own server stack, so this package imports nothing eagerly.
"""
