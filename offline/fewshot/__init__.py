"""Few-shot meta-learning: task sampling, REPTILE over any network, the 4-layer conv net,
MetaNAS (DARTS + REPTILE with soft pruning), REPTILE-initialised heads, and the CLI."""
