import random

import torch

from vlmtrack.train.setup import data_workers, epoch_batches, epoch_order


def test_length_grouped_batches_cover_the_epoch_and_pad_less():
    rng = random.Random(0)
    lengths = [rng.randint(3, 40) for _ in range(1000)]
    order = epoch_order(1000, seed=5, epoch=2)
    plain = epoch_batches(order, 16, None, 5, 2)
    grouped = epoch_batches(order, 16, lengths, 5, 2)
    assert grouped == epoch_batches(order, 16, lengths, 5, 2)  # a function of (seed, epoch): resumable
    assert len(grouped) == len(plain) == 62
    assert sorted(i for b in grouped for i in b) == sorted(i for b in plain for i in b)
    assert all(len(b) == 16 for b in grouped)

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert padding(grouped) < 0.2 * padding(plain)


def test_data_workers_are_sized_to_the_machine():
    assert data_workers(3, torch.device("cpu")) == 3
    assert data_workers(-1, torch.device("cpu")) == 0
    assert 0 <= data_workers(-1, torch.device("cuda")) <= 12
