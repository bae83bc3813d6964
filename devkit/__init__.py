"""Helpers the tests, the demo and the benchmark share, and the product never ships: not a package of
the wheel (pyproject's package discovery includes only edged and tools). Imported from a checkout."""
