import pytest

from mdn.bench import check


@pytest.fixture(autouse=True)
def _fresh_gate_caches():
    """Every test starts with empty gate/reference caches (they live for the process, like a sweep worker's)."""
    check.clear_caches()
    yield
    check.clear_caches()
