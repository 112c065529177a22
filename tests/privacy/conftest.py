"""Fixtures for the privacy tests."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from privacy_testing import site_key

from privacy.policy import PrivacyPolicy


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return site_key(7)


@pytest.fixture
def policy() -> PrivacyPolicy:
    # 200 records, batch 4 -> q = 0.02, 50 steps per round (secagg-and-dp.md B5).
    return PrivacyPolicy(
        target_epsilon=8.0,
        delta=1e-5,
        accountant="rdp",
        max_grad_norm=1.0,
        planned_rounds=20,
        local_epochs=1,
        batch_size=4,
    )
