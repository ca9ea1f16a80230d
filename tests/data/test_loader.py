import random

import torch

from tests.data.test_dataset import tiny_dataset
from vlmtrack.data.loader import (IN_FLIGHT_BYTES, MAX_PREFETCH, chunks, data_workers, epoch_batches, epoch_order,
                                 eval_pieces, loader, loader_sizing, train_batches)


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


def test_batches_in_flight_stay_under_the_byte_cap():
    mb = 2**20
    # so400m-384 features, batch 256 (430 MB): 56 in flight before, which stalled steps 5-12 on an H200
    workers, prefetch = loader_sizing(14, 256 * 729 * 1152 * 2)
    assert (workers, prefetch) == (9, 1) and workers * prefetch * 256 * 729 * 1152 * 2 <= IN_FLIGHT_BYTES
    assert loader_sizing(14, 4 * mb) == (14, MAX_PREFETCH), "small batches keep the full prefetch"
    assert loader_sizing(14, 200 * mb) == (14, 1), "20 slots: every worker, one batch each"
    assert loader_sizing(14, 512 * mb) == (8, 1), "8 slots: fewer workers"
    assert loader_sizing(4, 512 * mb) == (4, 2)
    assert loader_sizing(14, 3 * IN_FLIGHT_BYTES) == (2, 1), "never fewer than two batches ahead"
    assert loader_sizing(14, 0) == (14, MAX_PREFETCH), "unknown size: no cap"
    assert loader_sizing(0, 10 * IN_FLIGHT_BYTES)[0] == 0, "no workers stays no workers"


def test_the_loader_applies_the_sizing():
    class Samples(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def vision_bytes(self):
            return IN_FLIGHT_BYTES // 16  # a batch of 4: a quarter of the cap

    dl = loader(Samples(), iter([[0, 1, 2, 3]]), 0, num_workers=6, batch_size=4)
    assert (dl.num_workers, dl.prefetch_factor) == (4, 1)
    dl = loader(Samples(), iter([[0, 1]]), 0, num_workers=2, batch_size=2)
    assert (dl.num_workers, dl.prefetch_factor) == (2, 4)
    # a list of batches (eval, ablations) starts no worker that would have nothing to load
    assert loader(Samples(), [[0, 1, 2, 3]], 0, num_workers=6, batch_size=4).num_workers == 1
    assert loader(Samples(), [[0], [1], [2]], 0, num_workers=2, batch_size=1).num_workers == 2


def test_an_eval_loader_in_pieces_gives_the_same_batches(tiny_paths, tmp_path):
    """Pieces are decoded by several workers at once and joined in order: the batches are those of the
    whole-batch loader, field by field, so eval losses do not depend on the number of workers."""
    bb, ds = tiny_dataset(tiny_paths, tmp_path)
    batches = chunks(list(range(len(ds))), 3) + [[3, 0]]
    whole = list(loader(ds, batches, bb.pad_id, num_workers=0, batch_size=3))
    pieced = list(loader(ds, batches, bb.pad_id, num_workers=2, batch_size=3, pieces=2))
    assert len(pieced) == len(whole) == len(batches)
    for a, b in zip(whole, pieced):
        assert a.ids == b.ids
        for name in ("input_ids", "attention_mask", "labels", "pixel_values", "num_supervised"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_a_persistent_eval_loader_gives_the_same_batches_every_pass_with_the_same_workers(tiny_paths, tmp_path):
    """An eval's loader is iterated once per eval; its workers stay up between passes (a full run has
    thousands of quick evals), whole or in pieces, and every pass gives the one-shot loader's batches."""
    bb, ds = tiny_dataset(tiny_paths, tmp_path)
    batches = chunks(list(range(len(ds))), 2)
    once = list(loader(ds, batches, bb.pad_id, num_workers=0, batch_size=2))
    for pieces in (1, 2):
        kept = loader(ds, batches, bb.pad_id, num_workers=2, batch_size=2, pieces=pieces, persistent=True)
        inner = kept if pieces == 1 else kept.parts
        passes, workers = [], []
        for _ in range(2):
            passes.append(list(kept))
            workers.append([w.pid for w in inner._iterator._workers])
        assert workers[0] == workers[1] and len(workers[0]) == 2
        for run in passes:
            assert [b.ids for b in run] == [b.ids for b in once]
            assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(run, once))
        del kept, inner


def test_eval_batches_go_in_pieces_only_where_workers_decode_images():
    assert eval_pieces(256, 14, decodes_images=True) == 8, "pieces of 32"
    assert eval_pieces(256, 4, decodes_images=True) == 4, "no more pieces than workers"
    assert eval_pieces(16, 14, decodes_images=True) == 1
    assert eval_pieces(256, 14, decodes_images=False) == 1, "cached features load fast whole"
    assert eval_pieces(256, 1, decodes_images=True) == 1 and eval_pieces(256, 0, decodes_images=True) == 1


def test_a_training_loader_told_its_last_step_ends_there(tiny_paths, tmp_path):
    """Told the run's last step, the loader hands out exactly the batches up to it (the same as the
    endless one's), so its workers go idle before the run's last eval instead of decoding batches no one takes."""
    bb, ds = tiny_dataset(tiny_paths, tmp_path)
    endless = train_batches(ds, 2, seed=3, start_step=1, pad_id=bb.pad_id, num_workers=0)
    expected = [next(endless).ids for _ in range(5)]  # 2 steps an epoch: crosses two epoch boundaries
    planned = list(train_batches(ds, 2, seed=3, start_step=1, pad_id=bb.pad_id, num_workers=2, stop_step=6))
    assert [b.ids for b in planned] == expected
    assert list(train_batches(ds, 2, seed=3, start_step=4, pad_id=bb.pad_id, num_workers=0, stop_step=4)) == []
