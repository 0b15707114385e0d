"""Training batches: every example once per epoch, and length grouping that cuts padding."""
import torch

from forgetlab.train.batching import epoch_batches


def padded_tokens(batches, lengths):
    return sum(max(lengths[i] for i in b.tolist()) * len(b) for b in batches)


def test_plain_epoch_is_a_seeded_permutation_cut_into_batches():
    batches = epoch_batches(10, 4, torch.Generator().manual_seed(3))
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert torch.cat(batches).tolist() == expected.tolist()


def test_grouped_epoch_keeps_every_example_once_and_pads_only_within_lengths():
    # 32 examples, lengths 1 and 10 alternating: with one group of 8 batches of 4 (all 32 examples),
    # sorting before cutting gives 4 batches of length 1 and 4 of length 10: no padding at all
    lengths = [1, 10] * 16
    grouped = epoch_batches(32, 4, torch.Generator().manual_seed(0), lengths, group=8)
    assert sorted(torch.cat(grouped).tolist()) == list(range(32))
    assert len(grouped) == 8 and all(len(b) == 4 for b in grouped)
    assert padded_tokens(grouped, lengths) == sum(lengths) == 176
    assert sorted(len({lengths[i] for i in b.tolist()}) for b in grouped) == [1] * 8
    plain = epoch_batches(32, 4, torch.Generator().manual_seed(0))
    assert padded_tokens(plain, lengths) > 176        # random batches mix lengths 1 and 10


def test_grouped_epoch_is_reproducible_and_groups_are_local():
    lengths = list(range(40))
    a = epoch_batches(40, 5, torch.Generator().manual_seed(7), lengths, group=2)
    b = epoch_batches(40, 5, torch.Generator().manual_seed(7), lengths, group=2)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert len(a) == 8
    # each group is 10 examples of the seeded permutation: its two batches split it at its median length
    order = torch.randperm(40, generator=torch.Generator().manual_seed(7))
    batch_sets = {frozenset(x.tolist()) for x in a}
    for g in range(4):
        chunk = sorted(order[10 * g: 10 * g + 10].tolist())
        assert frozenset(chunk[:5]) in batch_sets and frozenset(chunk[5:]) in batch_sets
