"""The Request Network: the importer daemon (``python -m importer``) and its API
(``uvicorn importer.api:app``). It imports nothing from ``app`` or ``jobs``: the exports
directory and the ``exchange`` contract are its only link to the Response Network."""
