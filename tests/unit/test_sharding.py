"""Sharding, the launcher's arguments, and the big-model placement's CPU-testable parts."""

import builtins

import pytest
import torch

from fp16guard.errors import Fp16GuardError, InputError
from fp16guard.execution.distributed import shard
from fp16guard.execution.launch import from_env, strip_option
from fp16guard.execution.placement import describe, device_map, spread
from fp16guard.testing import build_model


def test_shard_balances_padded_tokens_and_uses_every_batch_once():
    costs = [8000, 7990, 7800, 7000, 6000, 3000, 1200, 300]
    shares = shard(costs, 2)
    assert sorted(n for share in shares for n in share) == list(range(len(costs)))
    assert all(share == sorted(share) for share in shares)
    loads = [sum(costs[n] for n in share) for share in shares]
    assert max(loads) - min(loads) <= max(costs) // 4
    assert shard(costs, 2) == shares  # the same split on every rank


def test_shard_needs_a_batch_per_rank():
    with pytest.raises(InputError, match="2 batch"):
        shard([10, 10], 3)


def test_a_single_rank_gets_everything():
    assert shard([3, 1, 2], 1) == [[0, 1, 2]]


def test_strip_option_removes_both_spellings():
    args = ["validate", "esm2", "--gpus", "2", "--device", "cuda", "--gpus=4", "-o", "out"]
    assert strip_option(args, "--gpus") == ["validate", "esm2", "--device", "cuda", "-o", "out"]


def test_torchrun_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    world = from_env()
    assert (world.rank, world.size, world.local_rank, world.main) == (1, 2, 1, False)


def test_placement_names_where_the_parameters_are():
    module = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 10).half())
    assert describe(module) == f"cpu ({(220 * 4 + 110 * 2) / 1e9:.2f} GB)"


def test_spreading_without_accelerate_says_what_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_accelerate(name, *args, **kwargs):
        if name.startswith("accelerate"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_accelerate)
    with pytest.raises(Fp16GuardError, match=r"fp16guard\[multigpu\]"):
        spread(torch.nn.Linear(2, 2), set())


@pytest.mark.skipif(torch.cuda.device_count() > 0, reason="checks the message on a machine without CUDA")
def test_spreading_without_gpus_is_an_environment_error():
    pytest.importorskip("accelerate")
    with pytest.raises(Fp16GuardError, match="0 CUDA device"):
        spread(torch.nn.Linear(2, 2), set())


def test_the_device_map_balances_whole_blocks_over_the_gpus():
    pytest.importorskip("accelerate")
    model = build_model(layers=6, dim=64, heads=4)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    plan = device_map(model, {"TransformerLayer"}, [weights, weights])
    blocks = {name: gpu for name, gpu in plan.items() if name.startswith("layers.")}
    # Every block whole on one GPU (no key inside a block), both GPUs used, in order.
    assert sorted(blocks) == sorted(f"layers.{i}" for i in range(6))
    assert set(plan.values()) == {0, 1}
    assert [blocks[f"layers.{i}"] for i in range(6)] == sorted(blocks.values())


def test_a_model_too_big_for_the_gpus_is_refused_not_offloaded():
    pytest.importorskip("accelerate")
    model = build_model(layers=6, dim=64, heads=4)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    with pytest.raises(Fp16GuardError, match=r"does not fit in 2 GPU\(s\)"):
        device_map(model, {"TransformerLayer"}, [weights // 4, weights // 4])
