"""Byte-exact Project Origin cryptography: pure functions, no I/O (docs/crypto.md).

The commitments and range proofs run on a group backend (`backend.py`,
``STAMP_CRYPTO_BACKEND``): ``decaf``, the project's C extension `_decaf.c` on libdecaf
(points kept internal, multiscalar multiplication, Keccak-f[1600] in C), or ``sodium``,
libsodium per operation with the pure-Python Keccak. Both give byte-identical results.

Constant time where a scalar is secret, variable time where every scalar is public, as the
`bulletproofs` crate does:

- constant time: the commitment V = v·B + γ·B_blinding, T₁ and T₂ (`msm_ct`), the bit
  commitment A (`select_sum` over the quantity's bits, then α·B_blinding) and S with its
  random vectors s_L, s_R and ρ (`msm_ct`);
- variable time: the inner-product rounds L and R and the generator fold (`msm_vartime`,
  `fold`), and all of verification (`msm_vartime`).

Scalar arithmetic on Python ints (polynomials, inner-product vectors) is not constant time
on either backend, nor are libsodium's skipped 0/1 factors and the sodium backend's bit
commitment (additions for the set bits only).
"""
