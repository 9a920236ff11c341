"""Criteria, allocation, budgets, plan files, the obs solver."""
