"""The dialect-neutral generation core, shared by every API dialect.

``request`` is the neutral request (:class:`~app.generation.request.GenerationSpec`),
``core`` validates it, renders prompts (``prompt``), compiles grammars (``structured``,
``tools``) and queues engine submissions (``submission``, ``limits``), then yields the
neutral result stream (``events``); ``timing`` measures each request for metrics and
the log. Imports ``app.lifecycle`` and below; never a dialect or the HTTP layer.
"""
