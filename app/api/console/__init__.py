"""The web console at ``/``: static HTML, CSS and ES modules shipped as package data
(``static/``), served by :mod:`app.api.console.router` through the same edge middleware as
the API. The page holds no data of its own: it calls the public API routes.
"""
