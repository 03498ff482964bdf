"""Pykka actors: who owns which state while a certificate is in flight.

Actors never block on I/O: they start coroutines on the event loop through the
``LoopBridge`` and receive the outcome as a message to themselves.
"""
