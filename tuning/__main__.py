"""``python -m tuning``; see :mod:`tuning.cli`."""

from tuning.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
