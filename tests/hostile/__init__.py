"""The hostile public corpus: raw requests an attacker would send, and a browser's reading
of the ``Location`` headers they get (see tests/test_hostile_public.py)."""
