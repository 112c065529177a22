"""A hospital: joins a federation, trains on its own data, submits, reveals, personalizes.

Raw data never leaves this folder's data paths. What leaves is: the masked shared-model
update (summed by secure aggregation), the part its method seals to the coordinator (a
classifier head, for FedReMa and pFedNet), SecAgg key material, and signed copies of
privacy-ledger entries. One class, assembled from one mixin per job.
"""

from __future__ import annotations

from fedrema_cli.protocol.rounds import Actions
from fedrema_cli.roles.site.base import (
    ACCOUNTANT,
    FINGERPRINT_KEY,
    LEDGER,
    META,
    SiteData,
    read_ledger_text,
)
from fedrema_cli.roles.site.enrollment import Enrollment
from fedrema_cli.roles.site.ledger import Ledger
from fedrema_cli.roles.site.personalize import Personalizing
from fedrema_cli.roles.site.submit import Submitting
from fedrema_cli.roles.site.training import Training
from fedrema_cli.roles.site.withdraw import Withdrawing

__all__ = [
    "ACCOUNTANT",
    "FINGERPRINT_KEY",
    "LEDGER",
    "META",
    "Actions",
    "Site",
    "SiteData",
    "read_ledger_text",
]


class Site(Enrollment, Training, Ledger, Submitting, Withdrawing, Personalizing):
    """One site, bound to its private state folder."""
