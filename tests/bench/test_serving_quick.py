"""``ocap bench serving --quick`` runs (torch-free) and writes its section with the side-by-side figures."""

from tests.helpers import run_cli


def test_serving_benchmark_quick(tmp_path):
    out = tmp_path / "b.md"
    r = run_cli("bench", "serving", "--quick", "--out", str(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "<!-- section:serving-quick -->" in text and "| fmnist-cnn | 16 |" in text
    assert "| 0 failed of " in text         # no request dropped while the model was swapped
    assert "| none mapped | MET |" in text  # torch is not in the serving process
    assert "nan" not in text
