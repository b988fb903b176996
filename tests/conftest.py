import os

import pytest
import torch as th

th.set_num_threads(1)
os.environ.setdefault("SB3_DQN_EXT_TESTING", "1")


@pytest.fixture(autouse=True)
def _single_thread():
    th.set_num_threads(1)
    yield
