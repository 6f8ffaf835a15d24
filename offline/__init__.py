"""Offline tools that produce what the submission ships: the zip, and (later) metadata/."""
