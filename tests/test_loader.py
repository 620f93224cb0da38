"""make_loader: duration-bounded buckets, DDP partition, exact mid-epoch resume with workers."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, Recording, SupervisionSegment

from toolkit.data.dataset import AudioDataset
from toolkit.data.loader import make_loader
from toolkit.utils import ToolkitError


@pytest.fixture(scope="module")
def cuts(tmp_path_factory: pytest.TempPathFactory) -> CutSet:
    """40 short wav cuts of 0.1 .. 0.9 s."""
    tmp = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    out = []
    for i in range(40):
        n = int(16000 * (0.1 + 0.8 * rng.random()))
        path = tmp / f"c{i:02d}.wav"
        sf.write(path, (0.1 * rng.standard_normal(n)).astype(np.float32), 16000)
        cut = Recording.from_file(path, recording_id=f"c{i:02d}").to_cut()
        cut.id = f"c{i:02d}"
        cut.supervisions = [SupervisionSegment(id=cut.id, recording_id=cut.id, start=0, duration=cut.duration,
                                               text="a", language="en")]
        out.append(cut)
    return CutSet.from_cuts(out)


def ids_of(loader, n: int | None = None) -> list[list[str]]:
    out = []
    for batch in loader:
        out.append(batch["cut_ids"])
        if n is not None and len(out) == n:
            break
    return out


def test_batches_bounded_by_duration_and_epoch_covers_all(cuts: CutSet) -> None:
    loader, sampler = make_loader(cuts, AudioDataset(), max_duration=2.0, num_workers=0)
    durations = {c.id: c.duration for c in cuts}
    epoch0 = ids_of(loader)
    assert sorted(i for b in epoch0 for i in b) == sorted(durations)
    assert all(sum(durations[i] for i in b) <= 2.0 + 1e-6 for b in epoch0)
    assert sampler.epoch == 1 and sampler.batches_consumed == 0  # moved on by itself
    epoch1 = ids_of(loader)
    assert sorted(i for b in epoch1 for i in b) == sorted(durations)
    assert epoch1 != epoch0  # reshuffled with seed + epoch


def test_ddp_ranks_partition_the_data(cuts: CutSet) -> None:
    per_rank = []
    for rank in range(2):
        loader, _ = make_loader(cuts, AudioDataset(), max_duration=2.0, world_size=2, rank=rank, num_workers=0)
        per_rank.append(ids_of(loader))
    assert len(per_rank[0]) == len(per_rank[1])  # equal step counts: no DDP hang at the epoch end
    seen = [set(i for b in r for i in b) for r in per_rank]
    assert seen[0] | seen[1] == {c.id for c in cuts}
    assert len(seen[0] & seen[1]) <= 1  # lhotse may duplicate one cut to even out the last step


@pytest.mark.parametrize("stop_epoch, k", [(0, 3), (1, 2)])
def test_resume_is_exact_with_prefetching_workers(cuts: CutSet, stop_epoch: int, k: int) -> None:
    def fresh():
        return make_loader(cuts, AudioDataset(speed_perturb=True), max_duration=2.0, seed=7, num_workers=2)

    loader, _ = fresh()
    reference = [ids_of(loader) for _ in range(2)]  # two uninterrupted epochs
    assert len(reference[stop_epoch]) > k

    loader, sampler = fresh()
    for _ in range(stop_epoch):
        ids_of(loader)
    consumed = ids_of(loader, k)  # workers have prefetched beyond these k batches
    assert consumed == reference[stop_epoch][:k]
    buf = io.BytesIO()
    torch.save({"sampler": sampler.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)["sampler"]
    del loader

    loader2, sampler2 = fresh()
    sampler2.load_state_dict(state)
    rest = ids_of(loader2)
    assert rest == reference[stop_epoch][k:]
    if stop_epoch == 0:
        assert ids_of(loader2) == reference[1]  # and the next epoch continues as before


def test_resumed_batches_have_identical_audio(cuts: CutSet) -> None:
    ds = AudioDataset(speed_perturb=True, seed=1)
    loader, sampler = make_loader(cuts, ds, max_duration=2.0, num_workers=0)
    full = [b["audio"] for b in loader]
    loader, sampler = make_loader(cuts, ds, max_duration=2.0, num_workers=0)
    state = None
    for i, _ in enumerate(loader):
        if i == 1:
            state = sampler.state_dict()
            break
    loader, sampler = make_loader(cuts, ds, max_duration=2.0, num_workers=0)
    sampler.load_state_dict(state)
    rest = [b["audio"] for b in loader]
    assert len(rest) == len(full) - 2
    assert all(torch.equal(a, b) for a, b in zip(rest, full[2:]))


def test_resume_with_other_settings_is_an_error(cuts: CutSet) -> None:
    _, sampler = make_loader(cuts, AudioDataset(), max_duration=2.0, num_workers=0)
    state = sampler.state_dict()
    _, other = make_loader(cuts, AudioDataset(), max_duration=3.0, num_workers=0)
    with pytest.raises(ToolkitError, match="max_duration"):
        other.load_state_dict(state)
    state = dict(state, batches_consumed=10_000)
    loader, sampler = make_loader(cuts, AudioDataset(), max_duration=2.0, num_workers=0)
    sampler.load_state_dict(state)
    with pytest.raises(ToolkitError, match="same cuts"):
        ids_of(loader)


def test_bad_arguments(cuts: CutSet) -> None:
    with pytest.raises(ToolkitError, match="max_duration"):
        make_loader(cuts, AudioDataset(), max_duration=0)
    with pytest.raises(ToolkitError, match="rank=2"):
        make_loader(cuts, AudioDataset(), max_duration=1.0, world_size=2, rank=2)


def test_resume_on_one_rank_of_two(cuts: CutSet) -> None:
    def fresh():
        return make_loader(cuts, AudioDataset(), max_duration=1.5, world_size=2, rank=1, num_workers=0, seed=5)

    loader, _ = fresh()
    reference = ids_of(loader)
    loader, sampler = fresh()
    head = ids_of(loader, 2)
    state = sampler.state_dict()
    loader, sampler = fresh()
    sampler.load_state_dict(state)
    assert head + ids_of(loader) == reference
    _, rank0 = make_loader(cuts, AudioDataset(), max_duration=1.5, world_size=2, rank=0, num_workers=0, seed=5)
    with pytest.raises(ToolkitError, match="rank=1"):
        rank0.load_state_dict(state)


@pytest.mark.parametrize("n, buckets", [(1, 1), (2, 2)])
def test_a_tiny_set_is_one_batch_without_warnings(n, buckets):
    """A dev set of one utterance: lhotse cannot estimate bins for one bucket (it asserted), and an
    empty bin list made numpy warn "Mean of empty slice" at every validation; two cuts of
    one length (2 buckets each) got an empty bin list from lhotse's estimate too."""
    import warnings

    from lhotse import CutSet
    from lhotse.testing.dummies import dummy_cut

    from toolkit.data.loader import make_loader

    class Ids:
        def __getitem__(self, cuts):
            return [c.id for c in cuts]

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        loader, _ = make_loader(CutSet.from_cuts([dummy_cut(i, duration=1.0) for i in range(n)]), Ids(),
                                max_duration=10.0, num_buckets=buckets, num_workers=0, shuffle=False)
        assert list(loader) == [[f"dummy-mono-cut-{i:04d}" for i in range(n)]]
