"""The signed, hash-chained ledger: tampering is named by line, crashes are not corruption."""

from __future__ import annotations

import hashlib
import json

import pytest
from privacy_testing import build_ledger, site_key

from privacy import analysis
from privacy.accountant import SiteAccountant
from privacy.errors import LedgerIntegrityError, RoundAlreadyTrainedError
from privacy.ledger import (
    GENESIS_HASH,
    LEDGER_FORMAT,
    LedgerBody,
    LedgerEntry,
    ProblemKind,
    canonical_json,
    encode_line,
    ensure_round_not_recorded,
    entry_digest,
    history_from_entries,
    ledger_head,
    load_verified,
    make_entry,
    parse_lines,
    restore_accountant,
    round_epsilons,
    verify_chain,
)
from privacy.policy import PrivacyPolicy

ROUNDS = [(1.0, 0.02, 50)] * 3 + [(1.2, 0.025, 40), (1.2, 0.025, 40)]
N = len(ROUNDS)


@pytest.fixture(scope="module")
def ledger():
    # Module-scoped: tests only read it (strings and frozen entries).
    policy = PrivacyPolicy(
        target_epsilon=8.0,
        delta=1e-5,
        planned_rounds=20,
        local_epochs=1,
        batch_size=4,
        max_grad_norm=1.0,
    )
    entries, text, acc = build_ledger(ROUNDS, sign=site_key(7).sign, policy=policy)
    return entries, text, acc


def kinds_at(problems, line):
    return {p.kind for p in problems if p.line == line}


def lines_of(text):
    return text.splitlines(keepends=True)


def test_clean_ledger_verifies_and_replays_bit_for_bit(key, ledger):
    entries, text, _ = ledger
    parsed = parse_lines(text)
    assert verify_chain(parsed, key.public_key().verify) == []
    assert list(parsed.entries) == entries
    assert "".join(encode_line(e) for e in parsed.entries) == text  # canonical re-encoding
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines_of(text))
    assert entries[0].prev_hash == GENESIS_HASH
    assert [e.seq for e in entries] == list(range(N))
    assert entries[1].prev_hash == entries[0].entry_hash
    verified = load_verified(text, verify=key.public_key().verify, site="clev")
    assert verified.entries == parsed.entries


def test_history_round_trip_and_epsilons(ledger):
    entries, _, acc = ledger
    assert history_from_entries(entries) == acc.history == [(1.0, 0.02, 150), (1.2, 0.025, 80)]
    eps = round_epsilons(entries, delta=1e-5, mechanism="rdp")
    assert eps == [e.epsilon_after for e in entries]
    assert eps[-1] == acc.epsilon(delta=1e-5)


@pytest.mark.parametrize("i", range(N))
def test_edited_line_is_named(key, ledger, i):
    _, text, _ = ledger
    rows = lines_of(text)
    data = json.loads(rows[i])
    data["noise_multiplier"] = data["noise_multiplier"] * 2  # claim more noise than ran
    rows[i] = json.dumps(data) + "\n"
    problems = verify_chain(parse_lines("".join(rows)), key.public_key().verify)
    assert {ProblemKind.EDITED, ProblemKind.BAD_SIGNATURE} <= kinds_at(problems, i + 1)
    with pytest.raises(LedgerIntegrityError) as info:
        load_verified("".join(rows), verify=key.public_key().verify)
    assert info.value.line == i + 1 and f"line {i + 1}" in str(info.value)


@pytest.mark.parametrize("i", range(N))
def test_edited_and_rehashed_line_fails_its_signature(key, ledger, i):
    _, text, _ = ledger
    rows = lines_of(text)
    entry = LedgerEntry.model_validate_json(rows[i])
    forged = entry.model_copy(update={"epsilon_after": 0.01})
    forged = forged.model_copy(update={"entry_hash": entry_digest(forged)})
    rows[i] = encode_line(forged)
    problems = verify_chain(parse_lines("".join(rows)), key.public_key().verify)
    assert ProblemKind.BAD_SIGNATURE in kinds_at(problems, i + 1)
    if i + 1 < N:
        assert ProblemKind.CHAIN_BROKEN in kinds_at(problems, i + 2)


@pytest.mark.parametrize("i", range(N - 1))
def test_deleted_line_is_named(key, ledger, i):
    _, text, _ = ledger
    rows = lines_of(text)
    del rows[i]
    problems = verify_chain(parse_lines("".join(rows)), key.public_key().verify)
    missing = [p for p in problems if p.kind is ProblemKind.MISSING]
    assert len(missing) == 1 and missing[0].line == i + 1
    # counted from 1, as lines are: the deleted line i + 1 held entry i + 1
    assert f"entry {i + 1} is missing before this line" in missing[0].message
    assert str(missing[0]).startswith(f"line {i + 1}, entry {i + 2}, ")
    if i == 0:  # two in a row
        del rows[0]
        (gap,) = [
            p
            for p in verify_chain(parse_lines("".join(rows)), key.public_key().verify)
            if p.kind is ProblemKind.MISSING
        ]
        assert "entries 1..2 are missing" in gap.message


def test_entries_are_named_from_one_and_listed_as_text() -> None:
    from privacy.ledger import _entries

    assert (_entries([0]), _entries([1, 2, 3]), _entries([1, 4])) == (
        "entry 1",
        "entries 2..4",
        "entries 2, 5",
    )


def test_deleted_last_line_needs_the_published_head(key, ledger):
    entries, text, acc = ledger
    truncated = "".join(lines_of(text)[:-1])
    verify = key.public_key().verify
    assert verify_chain(parse_lines(truncated), verify) == []  # a shorter chain is still a chain
    problems = verify_chain(parse_lines(truncated), verify, expected_head=ledger_head(entries))
    assert [p.kind for p in problems] == [ProblemKind.TRUNCATED]
    # ...and the persisted accountant state (more spend than the ledger) catches it too.
    with pytest.raises(LedgerIntegrityError):
        restore_accountant(
            entries=parse_lines(truncated).entries, mechanism="rdp", cached_state=acc.state_dict()
        )


@pytest.mark.parametrize("i", range(N - 1))
def test_reordered_lines_are_named(key, ledger, i):
    _, text, _ = ledger
    rows = lines_of(text)
    rows[i], rows[i + 1] = rows[i + 1], rows[i]
    problems = verify_chain(parse_lines("".join(rows)), key.public_key().verify)
    assert ProblemKind.REORDERED in kinds_at(problems, i + 1)
    assert ProblemKind.REORDERED in kinds_at(problems, i + 2)
    assert not any(p.kind is ProblemKind.MISSING for p in problems)


@pytest.mark.parametrize("i", range(N))
def test_duplicated_line_is_named(key, ledger, i):
    _, text, _ = ledger
    rows = lines_of(text)
    rows.insert(i + 1, rows[i])
    problems = verify_chain(parse_lines("".join(rows)), key.public_key().verify)
    dup = [p for p in problems if p.kind is ProblemKind.DUPLICATE_ENTRY]
    assert len(dup) == 1 and dup[0].line == i + 2 and f"line {i + 1}" in dup[0].message


def test_duplicated_round_is_named(key, ledger):
    entries, text, _ = ledger
    # A validly signed, correctly chained entry that re-records the last round. make_entry
    # refuses to build it, so it is assembled by hand as a misbehaving shell would.
    prev = entries[-1]
    body = prev.body().model_copy(update={"timestamp": "2026-02-01T00:00:00+00:00"})
    unsigned = {
        **body.model_dump(mode="json"),
        "format": LEDGER_FORMAT,
        "seq": prev.seq + 1,
        "prev_hash": prev.entry_hash,
    }
    payload = canonical_json(unsigned)
    impostor = LedgerEntry.model_validate(
        {
            **unsigned,
            "entry_hash": hashlib.sha256(payload).hexdigest(),
            "signature": key.sign(payload).hex(),
        }
    )
    problems = verify_chain(parse_lines(text + encode_line(impostor)), key.public_key().verify)
    assert kinds_at(problems, N + 1) == {ProblemKind.DUPLICATE_ROUND}
    assert f"line {N}" in problems[0].message


def test_make_entry_refuses_a_round_twice(key, ledger):
    entries, _, _ = ledger
    with pytest.raises(RoundAlreadyTrainedError, match="already records round 5"):
        make_entry(entries[-1], entries[-1].body(), key.sign)
    with pytest.raises(RoundAlreadyTrainedError):
        ensure_round_not_recorded(entries, round=5)
    ensure_round_not_recorded(entries, round=6)
    other_site = entries[-1].body().model_copy(update={"site": "bost", "round": 99})
    with pytest.raises(LedgerIntegrityError):
        make_entry(entries[-1], other_site, key.sign)


def test_wrong_key_fails_every_signature(ledger):
    _, text, _ = ledger
    problems = verify_chain(parse_lines(text), site_key(8).public_key().verify)
    assert [p.line for p in problems if p.kind is ProblemKind.BAD_SIGNATURE] == list(
        range(1, N + 1)
    )


def test_entries_of_another_site_are_flagged(key, ledger):
    _, text, _ = ledger
    problems = verify_chain(parse_lines(text), key.public_key().verify, site="bost")
    assert {p.kind for p in problems} == {ProblemKind.WRONG_SITE}


def test_torn_final_line_is_not_corruption(key, ledger):
    _, text, _ = ledger
    torn = text + encode_line(LedgerEntry.model_validate_json(lines_of(text)[-1]))[:57]
    parsed = parse_lines(torn)
    assert parsed.torn_tail is not None and parsed.torn_tail.line == N + 1
    assert len(parsed.entries) == N and parsed.committed_text == text
    problems = verify_chain(parsed, key.public_key().verify)
    assert [p.kind for p in problems] == [ProblemKind.TORN_TAIL]
    assert load_verified(torn, verify=key.public_key().verify).torn_tail is not None


def test_complete_entry_without_newline_is_kept(key, ledger):
    entries, text, _ = ledger
    parsed = parse_lines(text.rstrip("\n"))
    assert list(parsed.entries) == entries
    assert parsed.torn_tail is not None and parsed.committed_text == text


def test_corrupt_middle_line_is_malformed(key, ledger):
    _, text, _ = ledger
    rows = lines_of(text)
    rows[2] = rows[2][:40] + "\n"
    problems = verify_chain(parse_lines("".join(rows)), key.public_key().verify)
    assert ProblemKind.MALFORMED in kinds_at(problems, 3)
    with pytest.raises(LedgerIntegrityError) as info:
        load_verified("".join(rows), verify=key.public_key().verify)
    assert info.value.line == 3


def test_restart_continues_the_spend(key, policy):
    verify = key.public_key().verify
    # Session 1: three rounds, then the process dies. Only text and state survive.
    _, text, acc1 = build_ledger([(1.0, 0.02, 50)] * 3, sign=key.sign, policy=policy)
    saved_state = json.dumps(acc1.state_dict())
    # Session 2: restore from the ledger (reconciled with the cached state) and train 2 more.
    parsed = load_verified(text, verify=verify, site="clev")
    acc2 = restore_accountant(
        entries=parsed.entries, mechanism="rdp", cached_state=json.loads(saved_state)
    )
    _, more_text, acc2 = build_ledger(
        [(1.0, 0.02, 50)] * 2,
        sign=key.sign,
        policy=policy,
        first_round=4,
        accountant=acc2,
        prev=parsed.entries[-1],
    )
    full = load_verified(text + more_text, verify=verify, site="clev")
    assert [e.round for e in full.entries] == [1, 2, 3, 4, 5]
    assert history_from_entries(full.entries) == acc2.history
    assert full.entries[-1].epsilon_after == acc2.epsilon(delta=1e-5)
    assert acc2.history == [(1.0, 0.02, 250)]
    five_rounds = analysis.epsilon([(1.0, 0.02, 250)], delta=1e-5, mechanism="rdp")
    assert acc2.epsilon(delta=1e-5) == five_rounds
    assert five_rounds > analysis.epsilon([(1.0, 0.02, 100)], delta=1e-5, mechanism="rdp")


def test_restore_after_crash_between_ledger_append_and_state_write(key, ledger):
    entries, _, acc = ledger
    stale = SiteAccountant(mechanism="rdp", history=history_from_entries(entries[:-1]))
    restored = restore_accountant(entries=entries, mechanism="rdp", cached_state=stale.state_dict())
    assert restored == acc
    two_behind = SiteAccountant(mechanism="rdp", history=history_from_entries(entries[:-2]))
    with pytest.raises(LedgerIntegrityError):
        restore_accountant(entries=entries, mechanism="rdp", cached_state=two_behind.state_dict())


def test_body_rejects_nonsense():
    good = dict(
        federation="f",
        site="s",
        round=1,
        steps=5,
        sample_rate=0.1,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        accountant="rdp",
        delta=1e-5,
        epsilon_after=0.5,
        target_epsilon=4.0,
        grad_sample_mode="hooks",
        library_versions={},
        dataset_fingerprint="0" * 64,
        model_hashes={},
        timestamp="2026-01-01T00:00:00+00:00",
    )
    LedgerBody(**good)
    for bad in (
        {"steps": 0},
        {"sample_rate": 0.0},
        {"noise_multiplier": 0.0},
        {"dataset_fingerprint": "xyz"},
        {"timestamp": "yesterday"},
        {"steps": "5"},
        {"poisson_sampling": False},
    ):
        with pytest.raises(ValueError):
            LedgerBody(**{**good, **bad})


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN"])
def test_non_finite_number_in_a_line_is_malformed_not_a_crash(key, ledger, value):
    # JSON parsers accept Infinity/NaN; canonical JSON cannot hold them. A forged line with one
    # must be named as malformed, not raise out of the verifier (audit would crash).
    _, text, _ = ledger
    rows = lines_of(text)
    rows[1] = rows[1].replace('"max_grad_norm":1.0', f'"max_grad_norm":{value}')
    assert value in rows[1]
    problems = verify_chain(parse_lines("".join(rows)), key.public_key().verify)
    assert ProblemKind.MALFORMED in kinds_at(problems, 2)
    with pytest.raises(LedgerIntegrityError) as info:
        load_verified("".join(rows), verify=key.public_key().verify)
    assert info.value.line == 2
