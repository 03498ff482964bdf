"""``python -m stamp.devstack``: the registry and wallet simulators, standalone."""

from stamp.devstack.cli import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m stamp.devstack"))
