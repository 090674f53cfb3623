import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_deterministic_flag():
    """`main(cfg)` with cfg.deterministic switches torch's process-wide flag on; switch it
    back so that tests elsewhere in the same session run as usual."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
