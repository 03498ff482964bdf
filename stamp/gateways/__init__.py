"""The outside world: async clients of the Registry (gRPC) and the Wallets (HTTP).

They run on the event loop; the gateway actors in ``actors/`` decide what to call
when, and turn the outcomes into messages.
"""
