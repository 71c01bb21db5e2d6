"""Cluster membership for a site's farmnodes: heartbeat, election, takeover.

``protocol`` is the authenticated heartbeat message and the receiver that filters it;
``transports`` carries heartbeats over UDP unicast, UDP multicast and serial lines;
``settings`` is the validated ``[cluster]`` table; ``runtime`` (:class:`ClusterRuntime`)
runs them. The wire format and its rules are described in ``docs/heartbeat.md``.

Import from the module that defines a name: this package imports none of them, so that
reading a configuration (``farmnode.cluster.settings``) does not import the runtime and the
resource agents behind it.
"""
