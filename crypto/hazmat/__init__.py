"""HAZMAT: low-level building blocks for crypto.secagg; do not use them directly."""
