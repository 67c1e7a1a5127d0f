"""Shared records and helpers every stage uses: the IR, errors, threads, packaged data."""
