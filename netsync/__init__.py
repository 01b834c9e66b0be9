"""Runtime pieces both networks use: settings base, logging, errors, passwords, databases.

Nothing here knows about users, outboxes or ledgers; the domain lives in ``app`` (Response
Network), ``jobs`` (its worker) and ``importer`` (Request Network), and the operator's tools
(the CLI, ``./run up``, the migrations runner) in ``ops``. Nothing here imports any of them.
"""
