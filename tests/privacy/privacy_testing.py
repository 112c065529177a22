"""Helpers for the privacy tests: deterministic Ed25519 keys and a ledger builder."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy.accountant import SiteAccountant
from privacy.ledger import LedgerBody, LedgerEntry, encode_line, make_entry
from privacy.policy import PrivacyPolicy

FINGERPRINT = "ab" * 32


def site_key(seed: int) -> Ed25519PrivateKey:
    """A deterministic Ed25519 key (tests only)."""
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def build_ledger(
    rounds: Sequence[tuple[float, float, int]],
    *,
    sign: Callable[[bytes], bytes],
    policy: PrivacyPolicy,
    site: str = "clev",
    federation: str = "demo",
    first_round: int = 1,
    accountant: SiteAccountant | None = None,
    prev: LedgerEntry | None = None,
) -> tuple[list[LedgerEntry], str, SiteAccountant]:
    """Record ``rounds`` (one history triple each) into an accountant and a signed ledger,
    chained after ``prev`` when given."""
    acc = accountant or SiteAccountant(mechanism=policy.accountant)
    entries: list[LedgerEntry] = []
    for i, (sigma, q, steps) in enumerate(rounds):
        acc.extend([(sigma, q, steps)])
        body = LedgerBody(
            federation=federation,
            site=site,
            round=first_round + i,
            steps=steps,
            sample_rate=q,
            noise_multiplier=sigma,
            max_grad_norm=policy.max_grad_norm,
            accountant=policy.accountant,
            delta=policy.delta,
            epsilon_after=acc.epsilon(delta=policy.delta),
            target_epsilon=policy.target_epsilon,
            grad_sample_mode="hooks",
            library_versions={"opacus": "1.6.0"},
            dataset_fingerprint=FINGERPRINT,
            model_hashes={"before": "00" * 32, "after": "11" * 32},
            timestamp=f"2026-01-{1 + i:02d}T12:00:00+00:00",
        )
        entries.append(make_entry(entries[-1] if entries else prev, body, sign))
    return entries, "".join(encode_line(e) for e in entries), acc
