"""Placement: which site takes a client, for every front (HTTP, ``${site:POOL}``, DNS,
``explain``, the embedded middleware), by health, drain, weight, load and where the client
is. :mod:`dispatcher.placement.model` is its vocabulary."""
