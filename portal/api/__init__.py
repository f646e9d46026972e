"""Plumbing shared by every app's `apis.py`: errors, authentication, pagination, throttling, schema."""
