"""`python -m sparsesim` runs the command line."""

from sparsesim.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
