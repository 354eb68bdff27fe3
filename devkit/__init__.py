"""Development helpers shared by the tests (tests/) and the benchmarks (bench/): tiny random models
(`tinymodels`), generated sticker images (`imagegen`), the tiny app world (`appworld`) and its server
in a process of its own (`python -m devkit.appserver`), and the headless-Chromium driver (`browser`).

Nothing here is used by the app or by the packages (stickerclip, stickerllm); it is importable from
the repository root, like `app`."""
