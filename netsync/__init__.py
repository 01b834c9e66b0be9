"""Runtime pieces both networks use: settings base, logging, errors, passwords, databases.

Nothing here knows about users, outboxes or ledgers; the domain lives in ``app`` (Response
Network), ``jobs`` (its worker) and ``importer`` (Request Network). ``devstack`` runs the whole
system on one machine for development.
"""
