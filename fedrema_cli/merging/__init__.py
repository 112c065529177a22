"""Merging methods behind one interface: what a site shares, and where its next head comes from.

Adding a method is one entry in METHODS; the CLI's ``--method`` choices are its keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Part = Literal["extractor", "all"]


@dataclass(frozen=True)
class Method:
    """How a method splits the model between the federation and the site."""

    name: str
    summary: str
    shared_part: Part | None  # summed through secure aggregation; None: nothing is shared
    sends_head: bool  # classifier head sealed to the coordinator (FedReMa needs it)
    head_source: Literal["global", "merged", "own"]  # head a site trains from next round

    @property
    def extractor_is_global(self) -> bool:
        return self.shared_part is not None


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "fedrema",
            "shared extractor; each head merged with its most relevant peers (FedReMa)",
            "extractor",
            True,
            "merged",
        ),
        Method(
            "fedavg", "one shared model, sample-weighted average (FedAvg)", "all", False, "global"
        ),
        Method(
            "fedper",
            "shared extractor; every head stays at its site (FedPer)",
            "extractor",
            False,
            "own",
        ),
        Method("local", "every site trains alone; nothing is shared", None, False, "own"),
    )
}
