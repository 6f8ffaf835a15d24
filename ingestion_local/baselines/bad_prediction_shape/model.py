"""Bad submission: predicts one column too few (ingestion must fail with ingestion_success 0)."""
import numpy as np


class Model:
    def __init__(self, metadata):
        self.output_dim = metadata.get_output_size()
        self.done_training = False

    def train(self, dataset, remaining_time_budget=None):
        pass

    def test(self, dataset, remaining_time_budget=None):
        count = sum(1 for _ in dataset)
        return np.zeros((count, self.output_dim - 1))
