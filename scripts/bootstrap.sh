#!/usr/bin/env bash
# Shared set-up for scripts/demo and scripts/test: system library, virtualenv, packages.
# Idempotent and quick when everything is already in place.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${STAMP_VENV:-$ROOT/.venv}"
EXTRAS="${1:-}"

have_libsodium() {
    ldconfig -p 2>/dev/null | grep -q 'libsodium\.so' && return 0
    ls /usr/lib/*/libsodium.so* /usr/local/lib/libsodium.so* /opt/homebrew/lib/libsodium*.dylib 2>/dev/null | grep -q . 
}

if ! have_libsodium; then
    echo "stamp: libsodium (Ristretto255 for commitments and range proofs) is missing; installing it" >&2
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libsodium23 >/dev/null
    elif command -v brew >/dev/null 2>&1; then
        brew install libsodium
    else
        echo "stamp: cannot install libsodium automatically on this system; install libsodium (>= 1.0.18) with your package manager and run again" >&2
        exit 1
    fi
fi

# The native crypto backend (stamp/crypto/_decaf.c) needs libdecaf's headers, a C compiler and
# the Python headers. Without them the install still succeeds and Stamp runs on libsodium.
have_native_build_deps() {
    [ -f /usr/include/decaf/decaf.h ] || [ -f /usr/local/include/decaf/decaf.h ] || return 1
    command -v "${CC:-cc}" >/dev/null 2>&1 || return 1
    "${PYTHON:-python3}" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null
}

if ! have_native_build_deps; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "stamp: installing libdecaf-dev, gcc and python3-dev for the native crypto backend" >&2
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libdecaf-dev gcc python3-dev >/dev/null \
            || echo "stamp: could not install them; Stamp will run on the slower libsodium backend" >&2
    else
        echo "stamp: libdecaf (headers), a C compiler and the Python headers are not all present and" \
             "cannot be installed automatically here; Stamp will run on the slower libsodium backend." \
             "Install them (e.g. libdecaf from https://sourceforge.net/projects/ed448goldilocks/) and run again" >&2
    fi
fi

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            PYTHON="$candidate"; break
        fi
    done
fi
if [ -z "$PYTHON" ]; then
    echo "stamp: Python 3.11 or newer is required" >&2
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
# setup.py and the C source are in the hash so that a change to the extension rebuilds it.
stamp_hash="$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" "$ROOT/setup.py" "$ROOT"/stamp/crypto/*.c \
    | sha256sum | cut -c1-16)$EXTRAS"
if [ "$(cat "$VENV/.stamp-installed" 2>/dev/null)" != "$stamp_hash" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
    "$VENV/bin/python" -m pip install -q -e "$ROOT$EXTRAS"
    echo "$stamp_hash" > "$VENV/.stamp-installed"
fi
