"""Keep the ``>>>`` examples in the crypto package's docstrings executable."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import crypto

MODULES = ["crypto", *sorted(m.name for m in pkgutil.walk_packages(crypto.__path__, "crypto."))]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
