"""webfarm's node daemon: the site tier that runs on each machine of a site."""

__version__ = "0.1.0.dev0"
