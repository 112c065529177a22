"""The privacy report: a data model built from verified ledgers, and its renderers."""

from privacy.report.model import (
    Assumptions,
    PrivacyReport,
    RoundResult,
    RoundRow,
    SiteReport,
    SiteStatus,
    VersionSpan,
    build_report,
    build_site_report,
    default_assumptions,
)
from privacy.report.render import (
    ReportRenderError,
    plain_problem,
    plot_png,
    problem_lines,
    report_digest,
    require_pdf_support,
    to_dict,
    to_html,
    to_pdf,
    to_rich,
)

__all__ = [
    "Assumptions",
    "PrivacyReport",
    "ReportRenderError",
    "RoundResult",
    "RoundRow",
    "SiteReport",
    "SiteStatus",
    "VersionSpan",
    "build_report",
    "build_site_report",
    "default_assumptions",
    "plain_problem",
    "plot_png",
    "problem_lines",
    "report_digest",
    "require_pdf_support",
    "to_dict",
    "to_html",
    "to_pdf",
    "to_rich",
]
