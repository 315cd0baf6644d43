"""Counters shared by workers and replicas (Redis); the memory backend lives with its users."""
