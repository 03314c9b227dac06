"""The web admin panel: fleet dashboard, model editor, playground, request log.

Server-rendered Django pages with a little plain JavaScript (``static/panel``).
Views are thin; what the pages show is computed by the plain modules here
(``words``, ``stats``, ``preview``) and read by ``queries``.
"""
