"""The embedded developer stack: real Redis, PostgreSQL, S3 and GCS servers on free local ports.

No Docker and no cloud account: every server ships inside a Python package (or is already on
the machine), runs as a child process bound to 127.0.0.1, and is stopped with its whole
process group. ``regionvault.devstack.services`` starts and stops the individual servers.
"""
