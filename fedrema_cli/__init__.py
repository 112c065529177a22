"""fedrema: personalized federated learning for hospitals, from the command line."""

__version__ = "0.1.0"
