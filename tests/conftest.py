"""Shared test helpers."""

import contextlib

import torch


@contextlib.contextmanager
def one_torch_thread():
    """Models this small run fastest on one thread (two threads wait on each other for every tiny op,
    badly so on a busy machine); the previous setting comes back afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
