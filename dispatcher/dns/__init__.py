"""The authoritative DNS front: sites answered by name, placed like redirects (docs/dns.md)."""
