"""``ocap bench serving --quick`` runs (torch-free) and writes its section with the side-by-side figures."""

from tests.helpers import run_cli


def test_serving_benchmark_quick(tmp_path):
    out = tmp_path / "b.md"
    r = run_cli("bench", "serving", "--quick", "--out", str(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "<!-- section:serving-quick -->" in text and "| fmnist-cnn |" in text
    assert ", 0 failed;" in text           # no request dropped while the model was swapped
