"""webfarm's dispatcher: the global tier that sends each client to one of several sites."""

__version__ = "0.1.0.dev0"
