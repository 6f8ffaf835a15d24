"""A faithful local replica of the AutoDL scoring program (NAUC, ALC, learning curve)."""
