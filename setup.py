"""Builds the optional native group backend (stamp/crypto/_decaf.c on libdecaf).

Everything else is declared in setup.cfg. The extension is optional: where libdecaf, a C
compiler or the Python headers are missing the build prints why and the install goes on
without it; Stamp then runs on the libsodium backend (STAMP_CRYPTO_BACKEND=auto).
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            _warn(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            _warn(exc)


def _warn(exc: Exception) -> None:
    print(
        "stamp: the native crypto backend (libdecaf) was not built; Stamp will use libsodium. "
        "Install libdecaf-dev, gcc and python3-dev (scripts/bootstrap.sh does) and reinstall. "
        f"Cause: {exc}",
        file=sys.stderr,
    )


setup(
    ext_modules=[
        Extension(
            "stamp.crypto._decaf",
            sources=["stamp/crypto/_decaf.c"],
            include_dirs=["/usr/include/decaf", "/usr/local/include/decaf"],
            libraries=["decaf"],
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
