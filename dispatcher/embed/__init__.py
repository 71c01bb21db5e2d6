"""The dispatcher embedded in a site's own web application: ASGI and WSGI middleware that run
the dispatcher's rules and placement in-process, from the same configuration and database as
``farm-dispatcher serve``. See ``docs/embedding.md``.
"""

from dispatcher.embed.asgi import DispatcherMiddleware
from dispatcher.embed.runtime import EmbeddedDispatcher
from dispatcher.embed.wsgi import WSGIDispatcherMiddleware

__all__ = ["DispatcherMiddleware", "EmbeddedDispatcher", "WSGIDispatcherMiddleware"]
