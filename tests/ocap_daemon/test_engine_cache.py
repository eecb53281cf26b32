"""TensorRT engine housekeeping on real directories. This machine has no TensorRT, so the engines are
stand-ins: files written where TensorRT writes them (one directory per model version)."""

from ocap_daemon.engine_cache import sweep


def _engines(root, *versions):
    for v in versions:
        (root / v).mkdir(parents=True)
        (root / v / "TensorrtExecutionProvider_TRTKernel_graph_0.engine").write_bytes(b"\0" * 64)


def test_sweep_removes_the_versions_not_kept_and_nothing_else(tmp_path):
    root = tmp_path / "trt"
    _engines(root, "fmnist-cnn", "cand-a", "cand-b", "cand-c")
    (root / "engine-from-before.engine").write_bytes(b"\0")          # not a version directory: left
    assert sweep(root, ["fmnist-cnn", "cand-b"]) == ["cand-a", "cand-c"]
    assert sorted(p.name for p in root.iterdir()) == ["cand-b", "engine-from-before.engine", "fmnist-cnn"]
    assert sweep(root, ["fmnist-cnn", "cand-b"]) == []


def test_no_cache_directory_is_nothing_to_sweep(tmp_path):
    assert sweep(tmp_path / "never-made", ["fmnist-cnn"]) == []
