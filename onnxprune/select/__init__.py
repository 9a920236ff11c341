"""Choosing what to remove: the importance criteria, the obs solver (the error left after
least-squares compensation), and the planner that turns scores and a budget into a plan."""
