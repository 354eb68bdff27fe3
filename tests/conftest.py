import os

# Tests never reach a model hub: everything they load is built here or shipped in the repo.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def open_corpus(tmp_path_factory):
    """The open sticker corpus, built once per test session (about 30 s on 2 cores)."""
    from train import build_open_stickers

    out = tmp_path_factory.mktemp("open")
    build_open_stickers.main(["--out", str(out)])
    return out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random StickerCLIP saved in a folder (its load_model source)."""
    import torch

    from stickerclip.factory import load_model

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny")
    load_model("tiny").save(d)
    return d


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from stickerclip.factory import load_model

    return load_model(str(tiny_dir))


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """A StickerService over the tiny app world (devkit/appworld.py), its caches in a tmp folder."""
    from devkit.appworld import make_service

    root = tmp_path_factory.mktemp("app")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STICKER_CHAT_CACHE", str(root / "cache"))
        yield make_service(root)
