"""The error corpus: for each failure a person meets, the exact sentence they read.

One file per origin (``test_postgres``, ``test_mysql``, ``test_bigtable``,
``test_config_and_spool``); each case makes the failure happen for real and asserts the
whole message, so a regression to a traceback, a ``Command was:`` line or a message that
names neither the cause nor the place is caught.
"""
