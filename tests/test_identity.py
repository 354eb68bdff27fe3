"""StickerCLIP.identity(): hashed once while nothing changes (the app asks for it several times at
start, and each hash reads every owned weight), hashed again when a weight or the config changes."""
import hashlib

import torch

from stickerclip.model import StickerCLIP, named_config


def test_identity_is_hashed_once_and_follows_changes(monkeypatch):
    torch.manual_seed(0)
    m = StickerCLIP(named_config("tiny")).eval()
    calls = []
    real = hashlib.sha256

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(hashlib, "sha256", counting)
    first = m.identity()
    assert [m.identity() for _ in range(3)] == [first] * 3 and len(calls) == 1
    with torch.no_grad():  # trained or loaded in place: a new identity
        next(m.visual_projection.parameters()).add_(1e-3)
    changed = m.identity()
    assert changed != first and len(calls) == 2
    m.config.name = "renamed"
    assert m.identity() not in (first, changed) and len(calls) == 3
    state = {k: v.clone() for k, v in m.state_dict().items()}
    fresh = StickerCLIP(named_config("tiny"))
    fresh.config.name = "renamed"
    fresh.load_state_dict(state)
    assert fresh.identity() == m.identity()
