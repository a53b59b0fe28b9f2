"""The portal: server-rendered pages for key holders and administrators, on the gateway's port.

``app.py`` routes and renders; ``security.py`` owns the session cookie, CSRF tokens and the response
headers; templates and the stylesheet ship in the package. Every change goes through ``services/``.
"""
