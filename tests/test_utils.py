"""The shared helpers: the torch thread budget."""

from __future__ import annotations

import threading

import pytest
import torch

from skdcd._utils import resolve_threads, thread_budget


def test_thread_budget_sets_and_restores_torch_threads():
    before = torch.get_num_threads()
    with thread_budget(1) as threads:
        assert threads == 1 == torch.get_num_threads()
        with thread_budget(None):  # nested: keeps the outer limit
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_thread_budget_restores_after_an_exception():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), thread_budget(1):
        raise RuntimeError
    assert torch.get_num_threads() == before


def test_concurrent_budgets_restore_the_setting_of_before_the_first():
    before = torch.get_num_threads()
    inside = threading.Barrier(2)
    leave = threading.Event()
    seen = []

    def call():
        with thread_budget(1):
            inside.wait()
            seen.append(torch.get_num_threads())
            leave.wait()

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    leave.set()
    for t in threads:
        t.join()
    assert seen == [1, 1]
    assert torch.get_num_threads() == before


def test_resolve_threads_outside_workers_keeps_torchs_setting():
    assert resolve_threads(None) == torch.get_num_threads()
    assert resolve_threads(3) == 3


def test_a_worker_threads_own_setting_is_restored():
    # torch's OpenMP setting is per thread: a thread's limit must not outlive its call
    seen = []

    def call():
        before = torch.get_num_threads()
        with thread_budget(1):
            pass
        seen.append(torch.get_num_threads() == before)

    t = threading.Thread(target=call)
    t.start()
    t.join()
    assert seen == [True]
