"""Fixtures several test modules share."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one torch thread, and steadiest on a busy 2-core machine;
    the caller's thread count comes back afterwards. A module opts in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
