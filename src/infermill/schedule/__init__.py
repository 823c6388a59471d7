"""Built-in scheduling for one box without an orchestrator: ``[schedule]`` cron and file-arrival triggers,
run by ``infermill serve`` (docs/scheduling.md).

``cron`` parses cron expressions (light: the spec imports it to validate ``[schedule] cron``);
``serve`` holds the :class:`~infermill.schedule.serve.Scheduler` and its loop; ``launch`` runs one job as
an ``infermill run`` subprocess and reads its exit code and summary.
"""
