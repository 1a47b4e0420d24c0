"""The exceptions the harness raises on purpose: mistakes a user can fix (the CLI prints them as one line and exits 2)
and a scheduler's signal interrupting a worker."""


class UserError(Exception):
    """Bad input (a name, a path, a value): the message names the value and the fix."""


class Interrupted(Exception):
    """Raised in a sweep worker's main thread by a scheduler's signal (sweeps.launch.Preempted): the objective queues
    its running trial again before Optuna records it failed (sweeps.storage.requeue)."""
