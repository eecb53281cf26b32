"""bench.int8: the section's table and verdict from given rows (the measuring runs in ``bench int8``)."""

from bench.int8 import judge, markdown


def _row(model, kind, speedup, delta_pp, fp32_ms=0.3):
    return {"model": model, "kind": kind, "mac_reduction": 1.0 if kind == "base" else 6.0, "fp32_accuracy": 0.95,
            "int8_accuracy": 0.95 + delta_pp / 100, "delta_pp": delta_pp, "agreement": 0.997, "fp32_bytes": 512000,
            "int8_bytes": 150000, "size_ratio": 3.41, "fp32_ms": fp32_ms, "int8_ms": fp32_ms / speedup,
            "speedup": speedup, "quantize_s": 2.0, "activations": "uint8", "reduce_range": False}


def _res(rows):
    return {"rows": rows, "quick": False, "minutes": 12.0, "vnni": True, "int8_flags": ["avx512_vnni"],
            "loadavg": [6.5, 7.0], "latency_runs": 2000, "prune": "the daemon's defaults"}


def test_the_target_counts_pruned_models_both_faster_and_within_a_point():
    rows = [_row("fmnist-cnn", "base", 2.0, 0.1), _row("fmnist-cnn", "pruned", 1.25, 0.0, fp32_ms=0.2),
            _row("fmnist-resnet20", "pruned", 1.6, -0.4), _row("fmnist-vgg", "pruned", 1.9, -1.5),
            {"model": "fmnist-mobilenetv2", "kind": "pruned", "error": "RuntimeError: ocap prune failed"}]
    [(target, measured, verdict)] = judge(rows)
    assert "≥ 1.3×" in target and measured == "1 of 3 (fmnist-resnet20)" and verdict == "MISSED"
    rows.append(_row("fmnist-mobilenetv2", "pruned", 1.4, -0.9))
    assert judge(rows)[0][1:] == ["2 of 4 (fmnist-resnet20, fmnist-mobilenetv2)", "MET"]
    text = markdown(_res(rows), "2 cores")
    # the pruned CNN: 1.25x over pruned FP32, and 0.3 / (0.2 / 1.25) = 1.88x over the base model in FP32
    assert "| fmnist-cnn | pruned | 6.0× | 95.00 % | 95.00 % | +0.00 | 99.70 % | 500 | 146 | 3.41× | 0.200 | 0.160 | " \
           "1.25× | 1.88× | 2.0 |" in text
    assert "| fmnist-mobilenetv2 | pruned | RuntimeError: ocap prune failed |" in text
    assert "VNNI: yes" in text and "uint8 activations, 8-bit weights" in text and "nan" not in text
