"""A site leaves the federation for good with a signed notice."""

from __future__ import annotations

from fedrema_cli.errors import IntegrityError, NotYetError, UsageError
from fedrema_cli.protocol import secagg as secure
from fedrema_cli.protocol.rounds import (
    Withdrawal,
    current_round,
    read_withdrawal,
    survivors,
    timestamp,
)
from fedrema_cli.roles.site.base import (
    SiteBase,
    _exclusive,
)


class Withdrawing(SiteBase):
    # -- withdrawing ------------------------------------------------------------------------

    def withdrawal(self) -> Withdrawal | None:
        """This site's withdrawal notice. A file in its place that does not verify as one
        (damaged, or written by someone else) is no withdrawal: the coordinator refuses it
        too, so the site goes on as before; `withdraw` reports it."""
        try:
            return read_withdrawal(self.fed, self.name)
        except IntegrityError:
            return None

    def last_round(self) -> int:
        """The last round this site takes part in: the federation's, or the one before its
        withdrawal (or the withdrawal's own round, if the site's update is in that sum)."""
        last = self.config.rounds
        if self.fed.roster is not None and (out := self.fed.removed_from(self.name)) is not None:
            last = out - 1  # the coordinator removed it from round ``out`` on
        w = self.withdrawal()
        if w is None:
            return last
        in_sum = self.fed.exists("submission", w.from_round, site=self.name)
        return min(last, w.from_round if in_sum else w.from_round - 1)

    def first_round(self) -> int:
        """The first round this site takes part in (a site approved later joins then)."""
        first = self.fed.first_round(self.name) if self.fed.roster is not None else None
        return first or 1

    def _require_active(self, r: int, *, joining: bool = False) -> None:
        """Refuse a round this site is not part of. ``joining``: a round before its first is
        fine (`submit` advertises keys for its first round)."""
        if r < self.first_round() and not joining:
            raise NotYetError(
                f"{self.name} joins the federation at round {self.first_round()}; "
                f"round {r} runs without it",
                hint="run `fedrema submit` (it advertises keys for that round), then wait",
            )
        out = self.fed.removed_from(self.name) if self.fed.roster is not None else None
        if r > self.last_round() and out is not None:
            w = self.withdrawal()
            if w is None or out <= w.from_round:
                secure.forget_secrets(self.state, before=self.config.rounds + 1)
                raise UsageError(
                    f"the coordinator removed {self.name} from the roster from round {out} "
                    "on; it sends nothing more",
                    hint="`fedrema personalize` builds this site's model from the rounds so far",
                )
        if r > self.last_round():
            w = self.withdrawal()
            assert w is not None
            # Every round this site took part in has its result: no secret is needed now.
            secure.forget_secrets(self.state, before=self.config.rounds + 1)
            raise UsageError(
                f"{self.name} withdrew from the federation from round {w.from_round} on "
                f"({w.reason}); it sends nothing more",
                hint="`fedrema personalize` builds this site's model from the rounds so far",
            )

    @_exclusive
    def withdraw(
        self, reason: str | None = None, *, dry_run: bool = False
    ) -> tuple[Withdrawal, bool]:
        """Post a signed notice that this site takes part in no further round; (notice, new?).

        The coordinator then stops waiting for it instead of waiting out every phase's
        deadline. A round whose sum already holds this site's masked update still needs its
        unmasking shares, so then the withdrawal starts with the next round and `submit`
        finishes the current one. Irreversible: the federation goes on without this site.
        ``dry_run``: check and return the notice without posting it.
        """
        self._require_admitted()
        if self.fed.exists("withdrawal", 0, site=self.name):
            try:
                existing = read_withdrawal(self.fed, self.name)
            except IntegrityError as exc:
                raise IntegrityError(
                    f"withdrawals/{self.name}.json is there but is not {self.name}'s signed "
                    f"notice ({exc}); nobody treats it as a withdrawal",
                    hint="have whoever runs the storage remove that file, then withdraw again",
                ) from None
            assert existing is not None
            if not dry_run:  # a run cut off between posting and forgetting: finish it
                last = self.last_round()
                secure.forget_secrets(self.state, start=last + 1, before=self.config.rounds + 1)
            return existing, False
        r = current_round(self.fed)
        if r > self.config.rounds:
            raise UsageError(
                "the federation is complete: there is nothing to withdraw from",
                hint="run `fedrema personalize` to get your model",
            )
        if reason is None:
            spent = not self.trained(r) and self.budget_refusal(r) is not None
            reason = "privacy budget spent" if spent else "withdrawn by the site operator"
        if not reason.strip() or len(reason) > 200 or not reason.isprintable():
            raise UsageError("the reason must be one printable line of at most 200 characters")
        in_sum = self.fed.exists("submission", r, site=self.name)
        notice = Withdrawal(self.name, r + 1 if in_sum else r, reason, timestamp())
        if dry_run:
            return notice, True
        self.fed.put("withdrawal", 0, notice.to_json())
        # Keys made for rounds this site will not join protect nothing now.
        secure.forget_secrets(self.state, start=notice.from_round, before=self.config.rounds + 1)
        return notice, True

    def reveals_before_leaving(self, notice: Withdrawal) -> bool:
        """Whether one more `submit` is owed: a withdrawal round's sum holds this update."""
        r = notice.from_round - 1
        if not self.config.secure or r < 1 or current_round(self.fed) != r:
            return False
        if self.fed.exists("reveal", r, site=self.name):
            return False
        closed = self.fed.exists("unmask-request", r)
        return not closed or self.name in survivors(self.fed, r)
