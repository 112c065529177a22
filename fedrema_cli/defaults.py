"""Defaults the command line shows in its help (kept free of heavy imports)."""

DEFAULT_EPSILON = 3.0  # record-level, per site: privacy is on unless someone turns it off
DEFAULT_METHOD = "fedrema"  # the personalization method a new federation runs
