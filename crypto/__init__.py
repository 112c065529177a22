"""Secure aggregation as pure code: Bonawitz et al. 2017 double masking over bytes and arrays."""
