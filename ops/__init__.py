"""The operator's tools, on top of everything: the ``netsync`` CLI (``ops.cli``), ``./run up``'s
supervisor (``ops.devstack``) and its embedded PostgreSQL and Redis (``ops.embedded``), and the
migrations runner (``ops.migrate``).

They may import any package (they inspect both networks, run exports, apply a folder of files);
no package imports them. The shared base is ``netsync`` (configuration, databases, logging,
errors, metrics, passwords) with ``exchange`` (the file contract) beside it.
"""
