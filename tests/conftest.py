import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Keras walks deep functional graphs recursively (ResNet-1001 has ~3,000 layers).
sys.setrecursionlimit(max(sys.getrecursionlimit(), 30000))

import pytest  # noqa: E402

#: The real CIFAR-10 / MNIST subsets beside the checkout (../shared/data), as in CI.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"real data subsets not found at {SHARED_DATA} (they sit beside the checkout in CI)"
        )
    return SHARED_DATA
