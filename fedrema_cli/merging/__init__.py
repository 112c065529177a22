"""Merging algorithms as pure functions over arrays (no I/O): the math the methods call."""
