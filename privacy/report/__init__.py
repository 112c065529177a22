"""The privacy report: a data model built from verified ledgers, and its renderers."""

from privacy.report.model import (
    Assumptions,
    PrivacyReport,
    RoundRow,
    SiteReport,
    SiteStatus,
    build_report,
    build_site_report,
    default_assumptions,
)
from privacy.report.render import plot_png, to_dict, to_html, to_pdf, to_rich

__all__ = [
    "Assumptions",
    "PrivacyReport",
    "RoundRow",
    "SiteReport",
    "SiteStatus",
    "build_report",
    "build_site_report",
    "default_assumptions",
    "plot_png",
    "to_dict",
    "to_html",
    "to_pdf",
    "to_rich",
]
