"""What every part of a site shares: its state folder, its verified view of the federation,
its data, and where its rounds are kept. The jobs (enrollment, training, ledger, submit,
withdraw, personalize) are the mixins of `fedrema_cli.roles.site.Site`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np

from fedrema_cli.config import FederationConfig
from fedrema_cli.data.tables import (
    ImageSchema,
    Standardizer,
    TabularSchema,
    fingerprint,
    load_npz,
    load_table,
)
from fedrema_cli.errors import BUDGET_SPENT, ConfigError, DataError, IntegrityError
from fedrema_cli.identity import fingerprint as key_fingerprint
from fedrema_cli.learning.params import Params, load_params
from fedrema_cli.protocol import exchange
from fedrema_cli.protocol.rounds import (
    Phase,
    current_round,
    read_model,
    turn,
)
from fedrema_cli.store.federation import Federation, read_federation
from fedrema_cli.store.state import COORDINATOR_META, SITE_META, PartyState, not_a_state_folder
from fedrema_cli.store.workspace import Workspace

META = SITE_META
LEDGER = "ledger.jsonl"
ACCOUNTANT = "accountant.json"
FINGERPRINT_KEY = "ledger-fingerprint-key.json"
EVALUATION = "last-evaluation.json"  # what the last `personalize` found, for `status`
LABEL_RELEASE = "label-counts.json"  # the DP label-count release behind "balanced" weights


def _trained(r: int) -> str:
    return f"rounds/{r:04d}/trained.safetensors"


def _record(r: int) -> str:
    return f"rounds/{r:04d}/training.json"


@dataclass(frozen=True)
class SiteData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    standardizer: Standardizer | None
    train_fingerprint: str


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _exclusive(
    method: Callable[Concatenate[SiteBase, _P], _R],
) -> Callable[Concatenate[SiteBase, _P], _R]:
    """Run a site command holding its state folder (see `PartyState.exclusive`)."""

    @functools.wraps(method)
    def held(self: SiteBase, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self.state.exclusive():
            return method(self, *args, **kwargs)

    return held


class SiteBase:
    """One site, bound to its private state folder."""

    #: Set only by `fedrema simulate`: DP noise replayable from the simulation's seed, so a
    #: simulated result can be reproduced. Never set for a real site (no option reaches it).
    simulated_noise: bool = False

    def __init__(self, state_dir: str | Path, *, workspace: str | None = None) -> None:
        self.state = PartyState(state_dir)
        if not self.state.exists(META):
            if self.state.exists(COORDINATOR_META):
                raise not_a_state_folder(
                    state_dir,
                    "site",
                    hint="it is the coordinator's; a site command wants a site's --state (the "
                    "coordinator reads sites' published ledgers with -w WORKSPACE)",
                )
            raise not_a_state_folder(
                state_dir, "site", hint="create one with `fedrema init --site NAME ...`"
            )
        self.meta = self.state.read_meta(
            META, {"site": str, "workspace": str, "federation_sha256": str, "data": dict}
        )
        if not isinstance(self.meta["data"].get("train"), str):
            raise ConfigError(
                f"{self.state.root / META} is damaged (edited by hand?): no training data path",
                hint="restore this state folder from its backup",
            )
        ws = Workspace.open(workspace or self.meta["workspace"])
        config, digest = read_federation(ws)
        if digest != self.meta["federation_sha256"]:
            raise IntegrityError(
                f"{ws.describe()}/federation.json differs from the one this site "
                "pinned when it joined (replaced, or another federation's workspace); "
                "refusing to continue"
            )
        self.name: str = self.meta["site"]
        self.fed = Federation(ws, config, me=self.name, identity=self.state.identity())
        self.fed.identities.update(self.state.past_identities())  # before key rotations
        roster = self.fed.load_roster(pinned_sha256=self.meta.get("roster_sha256"))
        #: No roster version lists this site (yet): only `status` has anything to say.
        self.left_out = roster is not None and self.name not in self.fed.ever_listed()
        if roster is not None and not self.left_out:
            self._check_identity()
        if roster is not None and "roster_sha256" not in self.meta and not self.left_out:
            self.meta["roster_sha256"] = self.fed.ws.raw_sha256("roster")
            self.state.write_json(META, self.meta)

    def _check_identity(self) -> None:
        """The key the latest roster names for this site is one this folder holds (its
        current key, or the old one while a rotation waits): an identity.json copied from
        another site's folder, or replaced, is named here rather than as a file conflict."""
        named = self.fed.key_for(f"site:{self.name}").sign_pk
        if named not in self.fed.identities:
            raise ConfigError(
                f"{self.state.root}/identity.json does not hold {self.name}'s key: the roster "
                f"names {key_fingerprint(named)}, this folder holds "
                f"{key_fingerprint(self.fed.identity.public.sign_pk)} (replaced, or copied from "
                "another site's folder)",
                hint="restore this state folder's identity.json from its backup",
            )

    def _not_admitted(self) -> ConfigError:
        return ConfigError(
            f"the coordinator's roster does not include {self.name}",
            hint="the coordinator approves it with `fedrema approve SITE` (from the next round)",
        )

    def _require_admitted(self) -> None:
        """The roster is signed (else: wait for it) and lists this site (else: ask)."""
        self.fed.require_roster()
        if self.left_out:
            raise self._not_admitted()

    @property
    def config(self) -> FederationConfig:
        return self.fed.config

    def data(self) -> SiteData:
        return _load_data(self.config, self.meta["data"])

    def check_data_unchanged(self, data: SiteData) -> None:
        """The training file is the one this site joined with, byte for byte.

        The privacy plan and every earlier round assume it; a file edited, replaced or grown
        since `init` would otherwise surface as a budget refusal or a silently different
        model. State folders from before the fingerprint was recorded are not checked.
        """
        joined = self.meta.get("data_sha256", {})
        expected = joined.get("train") if isinstance(joined, dict) else None
        if expected is not None and data.train_fingerprint != expected:
            raise DataError(
                f"{self.meta['data']['train']} changed since this site ran `fedrema init` "
                "(its sha256 differs); the privacy plan and earlier rounds assume the data "
                "it joined with; nothing was trained",
                hint="restore the file as it was at init",
            )

    def _latest_own(self, before: int) -> Params | None:
        for k in range(before - 1, 0, -1):
            if self.state.exists(_trained(k)):
                return load_params(self.state.read_bytes(_trained(k)))
        return None

    def _start_params(self, r: int) -> Params:
        """What round r trains from: the method's choice among the global model, this site's
        own latest model and the part the coordinator sealed back to it."""
        method = self.config.method_impl()
        received = exchange.open_head_for_site(self.fed, r) if method.personal else None
        return method.start(read_model(self.fed, r), own=self._latest_own(r), received=received)

    # -- status -----------------------------------------------------------------------------

    def complete(self) -> bool:
        """Every round of the federation has finished: nothing is left to send, ever."""
        return current_round(self.fed) > self.config.rounds

    def trained(self, r: int) -> bool:
        return self.state.exists(_record(r))

    def round_part_done(self) -> bool:
        """True when nothing more is needed from this site for the current round."""
        r = current_round(self.fed)
        if r > self.last_round():
            return True
        t = turn(self.fed, r, withdrawn={})
        last_phase = Phase.UNMASK if self.config.secure else Phase.COLLECT
        return t.phase is last_phase and (self.name not in t.expected or self.name in t.acted)

    def next_step(self, status: dict[str, Any]) -> str:
        """This site's next command, refining the workspace view with private knowledge."""
        if self.left_out:
            err = self._not_admitted()
            return f"not admitted: {err}; {err.hint}"
        if status["phase"] in ("enrolling", "done"):
            return status["next_for"].get("each site", "wait for the coordinator to approve")
        r = status["round"]
        if (w := self.withdrawal()) is not None and r > self.last_round():
            return (
                f"withdrew from round {w.from_round} on ({w.reason}): nothing more to send; "
                "`fedrema personalize` builds its model from the rounds so far"
            )
        if not self.trained(r) and (spent := self.budget_refusal(r)) is not None:
            return (
                f"privacy budget spent (epsilon {spent.epsilon_now:.3f} of "
                f"{spent.target_epsilon:g}; round {r} would take it to "
                f"{spent.epsilon_after:.3f}): {BUDGET_SPENT}"
            )
        if status["phase"] == "collect" and self.name in status["missing"]:
            return (
                "`fedrema submit`"
                if self.trained(r)
                else "`fedrema train-local`, then `fedrema submit`"
            )
        return status["next_for"].get(self.name, "wait for the coordinator")


def read_ledger_text(state: PartyState) -> str:
    """The ledger file as text; bytes that are not UTF-8 (disk corruption, a bad edit) become
    U+FFFD so the ledger check names the damaged line instead of the command crashing."""
    if not state.exists(LEDGER):
        return ""
    return state.read_bytes(LEDGER).decode("utf-8", errors="replace")


def _json_bytes(obj: Any) -> bytes:
    import json

    return json.dumps(obj, indent=1, sort_keys=True).encode("utf-8") + b"\n"


def _load_data(config: FederationConfig, paths: dict[str, str | None]) -> SiteData:
    schema = config.data
    train, test = paths["train"], paths.get("test")
    if train is None:
        raise ConfigError("no training data configured")
    if isinstance(schema, TabularSchema):
        x_tr, y_tr = load_table(train, schema)
        std = schema.standardizer(x_tr)
        x_tr = std.transform(x_tr)
        x_te = y_te = None
        if test:
            x_te, y_te = load_table(test, schema)
            x_te = std.transform(x_te)
        return SiteData(x_tr, y_tr, x_te, y_te, std, fingerprint(train))
    assert isinstance(schema, ImageSchema)
    x_tr, y_tr = load_npz(train, input_shape=schema.input_shape, classes=schema.classes)
    x_te = y_te = None
    if test:
        x_te, y_te = load_npz(test, input_shape=schema.input_shape, classes=schema.classes)
    return SiteData(x_tr, y_tr, x_te, y_te, None, fingerprint(train))
