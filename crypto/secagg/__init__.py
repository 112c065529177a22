"""The Bonawitz et al. 2017 secure-aggregation protocol as client and server state machines."""
