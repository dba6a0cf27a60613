"""The attack stage: one Ray task per checkpoint × mode × similarity × chunk of pairs. ``tasks``:
what a task is, which are still to do, and what one does in its worker; ``stage``: the driver,
which runs them and logs their summaries."""
