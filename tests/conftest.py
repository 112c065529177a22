"""Suite-wide settings.

Test folders live in RAM (/dev/shm) where the machine has it: the CLI tests write and fsync
thousands of small signed files, and on a disk that is a quarter of the suite's time. The
files are as real as on disk (same kernel paths, same atomic renames); only the latency goes.

Every test runs in the product's runtime (`configure_runtime`): one torch thread, as every
`fedrema` command sets before it trains. Without it, tests that call the library directly
ran two torch threads per xdist worker, four threads fighting over two cores.
"""

from __future__ import annotations

import os
import tempfile

import pytest

from fedrema_cli.app import configure_runtime

configure_runtime()

_RAM = "/dev/shm"
if (
    os.path.isdir(_RAM)
    and os.access(_RAM, os.W_OK)
    and "FEDREMA_TEST_TMP_ON_DISK" not in os.environ
):
    tempfile.tempdir = _RAM


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The `slow` tests first (a stable sort): with `make test`'s one file per worker, in
    collection order, the minutes-long ones then run beside the rest, not alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
