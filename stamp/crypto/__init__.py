"""Byte-exact Project Origin cryptography: pure functions, no I/O (spec/crypto.md)."""
