"""Flower for regionvault: Flower itself, plus a Retry button and a Backups page.

``regionvault flower`` runs this. It is Flower's own Tornado application (same pages, same
HTTP API, same options) with three additions, registered in front of Flower's routes:

- the task page of a failed regionvault task offers "Retry", which re-sends the task with its
  original arguments (read from the result backend) to its domain's queue, once, and records
  who did it in the backup journal and the log (``retry.py``);
- a "Backups" page lists the journal's backups with the state of each step of their chain,
  linking each step to its task page;
- authentication is required unless explicitly switched off for development (``access.py``).

Like the CLI, this is an edge of the system: it talks to Celery through the app object Flower
was given, to the journal through ``regionvault.journal``, and starts a backup's run where
every other caller does (``workers.canvas``).
"""
