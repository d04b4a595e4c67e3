"""The uint8 training cache: the JPEG path's pixels, decoded once into memory-mapped arrays."""

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from pipeline.data.arrays import array_path
from pipeline.data.augment import augment_batch
from pipeline.data.dataset import ProcessedDataset, build_uint8_cache, make_loader, split_dataset
from pipeline.data.sampling import EpochSampler
from pipeline.errors import DataError

SIZE = 32


@pytest.fixture
def dataset(processed_dir, tmp_path) -> ProcessedDataset:
    """A private copy of the 64 px dataset: the arrays are written beside its manifest."""
    return ProcessedDataset(shutil.copytree(processed_dir / "64px", tmp_path / "64px"))


def test_arrays_hold_the_jpeg_paths_eval_pixels(dataset):
    paths = build_uint8_cache(dataset, SIZE)
    assert sorted(paths) == ["test", "train", "val"]
    for split, path in paths.items():
        assert path == array_path(dataset.root, SIZE, split)
        array = np.load(path, mmap_mode="r")
        assert array.dtype == np.uint8 and array.shape == (len(dataset.split(split)), SIZE, SIZE, 3)
        from_jpeg = split_dataset(dataset, split, SIZE, train=False)
        from_array = split_dataset(dataset, split, SIZE, train=False, array=path)
        for index in range(len(from_jpeg)):
            image, grade = from_array[index]
            assert torch.equal(image, from_jpeg[index][0]) and grade == from_jpeg[index][1]
        assert json.loads(path.with_suffix(".json").read_text())["ids"] == dataset.split(split)["id"].tolist()


def test_loader_augmentation_from_arrays_equals_the_jpeg_path(dataset):
    """Same images, same per-image draws: the uint8 cache changes nothing a model sees."""
    array = build_uint8_cache(dataset, SIZE)["train"]
    from_jpeg = split_dataset(dataset, "train", SIZE, train=True)
    from_array = split_dataset(dataset, "train", SIZE, train=True, array=array)
    for index, seed in [(0, 1), (1, 2), (2, 3), (len(from_jpeg) - 1, 4)]:
        assert torch.equal(from_array[(index, seed)][0], from_jpeg[(index, seed)][0])


@pytest.mark.parametrize("cache_format", ["jpeg", "uint8"])
def test_device_augmentation_gets_the_loaders_draws(dataset, cache_format):
    array = build_uint8_cache(dataset, SIZE)["train"] if cache_format == "uint8" else None
    on_loader = split_dataset(dataset, "train", SIZE, train=True, array=array)
    on_device = split_dataset(dataset, "train", SIZE, train=True, array=array, augment_on_device=True)
    keys = [(index, 1000 + index) for index in range(len(on_loader))]
    images, grades, draws = (torch.stack(parts) for parts in zip(*(on_device[key] for key in keys)))
    assert draws.shape == (len(keys), 3) and images.dtype == torch.uint8
    assert len(set(map(tuple, draws.tolist()))) == len(keys)  # every image its own draws
    expected = torch.stack([on_loader[key][0] for key in keys])
    augmented = augment_batch(images, draws)
    assert torch.equal(grades, torch.stack([on_loader[key][1] for key in keys]))
    # PIL and grid_sample round a source position that falls exactly between two pixels apart.
    assert (augmented != expected).any(dim=1).float().mean() < 0.005


def test_workers_map_the_arrays_themselves_and_deliver_the_same_batches(dataset):
    array = build_uint8_cache(dataset, SIZE)["train"]
    epochs = []
    for workers in (0, 2):
        train = split_dataset(dataset, "train", SIZE, train=True, array=array, augment_on_device=True)
        sampler = EpochSampler(len(train), seed=3)
        sampler.set_epoch(2)
        loader = make_loader(train, 4, shuffle=False, num_workers=workers, seed=3, sampler=sampler, training=True)
        epochs.append(list(loader))
        if workers:
            assert train.array._array is None  # only the workers mapped the file
    assert len(epochs[0]) == len(epochs[1]) > 1
    for single, parallel in zip(*epochs):
        assert all(torch.equal(a, b) for a, b in zip(single, parallel))


def test_building_leaves_the_global_rng_as_it_was(dataset):
    """Else a run's initial weights would depend on whether its cache existed already."""
    torch.manual_seed(0)
    build_uint8_cache(dataset, SIZE)
    after_build = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after_build)


def test_a_current_array_is_reused_and_a_stale_one_rebuilt(dataset):
    path = build_uint8_cache(dataset, SIZE)["val"]
    built = path.stat().st_ino
    assert build_uint8_cache(dataset, SIZE)["val"].stat().st_ino == built  # not rewritten
    index = path.with_suffix(".json")
    record = json.loads(index.read_text())
    index.write_text(json.dumps({**record, "ids": record["ids"][::-1]}))  # another manifest's order
    assert build_uint8_cache(dataset, SIZE)["val"].stat().st_ino != built
    assert json.loads(index.read_text())["ids"] == record["ids"]


def test_runs_that_ask_at_once_build_once_and_read_whole_arrays(dataset):
    """Parallel trainings (here threads of one process, which share a pid and so would share a
    temporary file name) wait on the lock: one builds, the others find the arrays current."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: build_uint8_cache(dataset, SIZE), range(3)))
    assert results[0] == results[1] == results[2]
    for split, path in results[0].items():
        from_array = split_dataset(dataset, split, SIZE, train=False, array=path)
        from_jpeg = split_dataset(dataset, split, SIZE, train=False)
        assert all(torch.equal(from_array[i][0], from_jpeg[i][0]) for i in range(len(from_jpeg)))
    assert not [p.name for p in path.parent.iterdir() if "partial" in p.name]


def test_an_array_that_does_not_fit_its_split_names_the_file(dataset):
    path = build_uint8_cache(dataset, SIZE)["test"]
    np.save(path, np.zeros((1, SIZE, SIZE, 3), np.uint8))
    with pytest.raises(DataError, match=rf"uint8 cache {path} holds uint8 \(1, 32, 32, 3\), not the \d+ RGB images"):
        split_dataset(dataset, "test", SIZE, train=False, array=path)[0]


def test_the_cache_is_never_upsampled(dataset):
    with pytest.raises(DataError, match="image_size=128 is larger than the processed dataset's 64 px"):
        build_uint8_cache(dataset, 128)
