"""Secure aggregation as deployed: what the coordinator holds after a round, dropouts, replays.

The protocol itself is tested in tests/crypto, and the round core (phases, dropouts at each
step, the threshold, withdrawals, rejoining) in-process and without training in
tests/test_round_core.py; here the question is what the *files* give away: everything in the
shared workspace plus the coordinator's private folder, and files the protocol must refuse.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crypto.hazmat import shamir
from crypto.secagg import KeyRoster, MaskedInput, MaskingRoster, UnmaskRequest, UnmaskShares
from crypto.secagg._derive import commitment_matches, self_mask
from fedrema_cli.errors import IntegrityError
from fedrema_cli.identity import unb64
from fedrema_cli.learning.params import flatten, load_params
from fedrema_cli.protocol import secagg as secure
from fedrema_cli.roles.site import Site
from tests.cli.conftest import (
    SITES,
    Fed,
    key_exchange,
    make_federation,
    run,
    run_rounds,
    snapshot,
    submit_all,
    train_and_submit,
)
from tests.signed_files import read_signed


def _true_updates(fed: Fed) -> dict[str, tuple[np.ndarray, float]]:
    """Each site's real extractor update and weight, from its *private* folder."""
    out = {}
    for s in SITES:
        site = Site(fed.site(s))
        delta, weight, _ = site.trained_update(1)
        out[s] = (delta, weight)
    return out


def test_the_coordinator_holds_only_the_sum(federation: Fed) -> None:
    fed = federation
    run_rounds(fed, 1)
    truth = _true_updates(fed)
    ws = fed.workspace / "rounds" / "0001"
    site = Site(fed.site("va"))
    ctx = secure.round_context(site.config, site.fed.require_roster(), 1)
    params = ctx.params
    roster = site.fed.require_roster()
    index = {s.name: s.index for s in roster.sites}

    # 1. The aggregate the coordinator published is the weighted mean of the true updates.
    before = load_params((fed.workspace / "rounds/0001/model.params.safetensors").read_bytes())
    after = load_params((fed.workspace / "rounds/0002/model.params.safetensors").read_bytes())
    ext = lambda p: flatten({k: v for k, v in p.items() if k.startswith("extractor.")})[0]  # noqa: E731
    weights = np.array([w for _, w in truth.values()])
    expected = sum(w * d for d, w in truth.values()) / weights.sum()
    # within the fixed-point bound (n * 2^-f over the total weight) and one float16 step of
    # the broadcast (stochastic rounding lands on a neighbour of the exact value)
    assert site.config.broadcast == "float16"
    step = np.spacing(np.abs(ext(after)).astype(np.float16)).astype(np.float64)
    bound = len(SITES) * 2.0**-params.frac_bits / weights.sum() + step + 1e-7
    assert np.all(np.abs(ext(after) - ext(before) - expected) <= bound)

    # 2. Everything the coordinator has: every file of the round and its own folder.
    key_roster = KeyRoster.from_bytes(
        unb64(read_signed(ws / "key-roster.json")["body"]["roster"], what="U1")
    )
    masking = MaskingRoster.from_bytes(
        unb64(read_signed(ws / "masking-roster.json")["body"]["roster"], what="U2")
    )
    request = UnmaskRequest.from_bytes(
        unb64(read_signed(ws / "unmask-request.json")["body"]["request"], what="U3")
    )
    reveals = [
        UnmaskShares.from_bytes((ws / "reveals" / f"{s}.msg.bin").read_bytes()) for s in SITES
    ]
    sid = key_roster.session_id(ctx)

    signed = np.int32 if params.modulus_bits == 32 else np.int64  # 2^32 for 4 sites ("auto")
    for s in SITES:
        u = index[s]
        masked = MaskedInput.from_bytes((ws / "submissions" / f"{s}.masked.bin").read_bytes())
        delta, weight = truth[s]
        true_encoded = np.clip(delta, -params.clip, params.clip) * weight
        # The masked vector itself says nothing: decoding it gives noise-sized values.
        as_seen = masked.vector[:-1].view(signed).astype(np.float64) / 2**params.frac_bits
        assert np.mean(np.abs(as_seen - true_encoded) > 1.0) > 0.99

        # The coordinator learns b_u (that is how the sum is unmasked) ...
        b_shares = [r.self_seed_shares[u] for r in reveals if u in r.self_seed_shares]
        assert len(b_shares) >= ctx.threshold
        b_u = shamir.combine(b_shares[: ctx.threshold])
        assert commitment_matches(sid, b_u, masking.commitments[u])
        # ... but never a single share of s_u^SK: every site was a survivor.
        assert not any(u in r.key_shares for r in reveals)
        assert u in request.survivors
        # So y_u - PRG(b_u) is still hidden behind the pairwise masks.
        unmasked_self = (masked.vector - self_mask(b_u, sid, params)).astype(params.dtype)
        still = unmasked_self[:-1].view(signed).astype(np.float64) / 2**params.frac_bits
        assert np.mean(np.abs(still - true_encoded) > 1.0) > 0.99

    # 3. No plaintext update anywhere: neither the weighted delta nor the trained extractor
    #    appears byte for byte in any shared file or in the coordinator's folder.
    blobs = [
        p.read_bytes()
        for p in (*fed.workspace.rglob("*"), *fed.coordinator.rglob("*"))
        if p.is_file()
    ]
    for s in SITES:
        trained = load_params(Site(fed.site(s)).state.read_bytes("rounds/0001/trained.safetensors"))
        needle = trained["extractor.0.weight"].tobytes()[:64]
        assert not any(needle in b for b in blobs), f"{s}'s trained weights leaked"


def test_a_tampered_masked_update_is_rejected_and_nothing_is_lost(federation: Fed) -> None:
    fed = federation
    key_exchange(fed)
    train_and_submit(fed)
    blob = fed.workspace / "rounds/0001/submissions/va.masked.bin"
    data = bytearray(blob.read_bytes())
    data[-3] ^= 0x55
    blob.write_bytes(bytes(data))
    before = snapshot(fed.workspace)
    out = run("aggregate", "-s", fed.coordinator)
    assert out.exit_code == 3 and "does not match its signed hash" in out.stderr
    assert snapshot(fed.workspace) == before
    # The refused update counts as never sent: the round closes without va, it is not stuck.
    out = run("aggregate", "-s", fed.coordinator, "--close", "--json")
    assert out.exit_code == 0, out.stderr
    assert "round 1: va's submission" in out.json()["rejected"]
    body = read_signed(fed.workspace / "rounds/0001/unmask-request.json")["body"]
    assert body["survivors"] == list(SITES[:-1]) and body["dropped"] == ["va"]


def test_a_file_from_one_site_the_protocol_refuses_does_not_stall_the_round(
    federation: Fed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key advert of small order (signed by its site, so it passes every file check) would
    make every honest site abort; the coordinator leaves that site out of the key roster."""
    from crypto.secagg import KeyAdvert

    fed = federation
    submit_all(fed)  # round-1 key adverts
    real = secure.read_message

    def small_order_va(f, kind, r, site):  # type: ignore[no-untyped-def]
        msg = real(f, kind, r, site)
        if kind == "key-advert" and site == "va":
            return KeyAdvert(msg.party, msg.round, bytes(32), msg.s_pk)
        return msg

    monkeypatch.setattr(secure, "read_message", small_order_va)
    out = run("aggregate", "-s", fed.coordinator, "--json")
    assert out.exit_code == 0, out.stderr
    assert "small order" in out.json()["rejected"]["round 1: va's key-advert"]
    roster = read_signed(fed.workspace / "rounds/0001/key-roster.json")["body"]
    assert roster["parties"] == list(SITES[:-1])


def test_a_file_replayed_from_another_round_is_rejected(federation: Fed) -> None:
    fed = federation
    submit_all(fed)  # round-1 key adverts
    src = fed.workspace / "rounds/0001/keys/va.json"
    dst = fed.workspace / "rounds/0002/keys/va.json"
    dst.parent.mkdir(parents=True)
    dst.write_bytes(src.read_bytes())
    site = Site(fed.site("cleveland"))
    with pytest.raises(IntegrityError, match=r"round 1 file where 2 was expected"):
        site.fed.get("key-advert", 2, site="va")


def test_with_the_consistency_check_an_honest_round_completes(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "--no-dp", "--consistency-check")
    key_exchange(fed)
    train_and_submit(fed)
    assert run("aggregate", "-s", fed.coordinator).exit_code == 0
    submit_all(fed)  # everyone signs the survivor set; the last ones to sign can reveal
    submit_all(fed)  # the first ones reveal now
    assert run("aggregate", "-s", fed.coordinator).exit_code == 0
    result = read_signed(fed.workspace / "rounds/0001/result.json")["body"]
    assert result["survivors"] == list(SITES)
    assert sorted(p.name for p in (fed.workspace / "rounds/0001/consistency").iterdir()) == [
        f"{s}.json" for s in SITES
    ]


def test_tight_public_bounds_at_init_give_3_byte_masked_words(tmp_path: Path) -> None:
    """`init --max-records --update-clip` sign tight headroom bounds into the config, and the
    masked sum then travels in 2^24 (3 bytes a coordinate) instead of 2^32."""
    fed = make_federation(tmp_path, "--max-records", "256", "--update-clip", "4")
    secagg = json.loads((fed.workspace / "federation.json").read_text())["body"]["secagg"]
    assert (secagg["max_weight"], secagg["clip"], secagg["modulus_bits"]) == (256, 4.0, "auto")
    run_rounds(fed, 1)
    masked = MaskedInput.from_bytes(
        (fed.workspace / "rounds" / "0001" / "submissions" / "va.masked.bin").read_bytes()
    )
    assert masked.modulus_bits == 24 and int(masked.vector.max()) < 1 << 24
    # A hospital with more training records than the bound is refused before it writes.
    small = make_federation(tmp_path / "small", "--max-records", "50", sites=(), approve=False)
    joined = run(
        "init",
        "-w",
        small.workspace,
        "-s",
        small.site("cleveland"),
        "--site",
        "cleveland",
        "--train",
        small.data("cleveland"),
    )
    assert joined.exit_code != 0 and "Traceback" not in joined.stderr
    assert "199 training records" in joined.stderr and "--max-records" in joined.stderr
    assert not small.site("cleveland").exists()
