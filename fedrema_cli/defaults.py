"""Defaults the command line shows in its help (kept free of heavy imports)."""

DEFAULT_EPSILON = 3.0  # record-level, per site: privacy is on unless someone turns it off
DEFAULT_METHOD = "fedrema"  # the personalization method a new federation runs
DEFAULT_CLASS_WEIGHTING = "none"  # chosen by measurement, see config.TrainingConfig

CLASS_WEIGHTING_HELP = (
    "Loss weight per class: none; balanced (inverse frequency of each site's labels; under DP "
    "from a noisy release of its label counts, planned into the budget and kept in the "
    "ledger); or one weight per class, e.g. 1,4 (public, no privacy cost)."
)
