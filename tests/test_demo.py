from __future__ import annotations

import json

from lookalike.app.demo import run_demo


def test_demo_writes_everything(tmp_path) -> None:
    res = run_demo(tmp_path / "out", dataset="digits", epochs=2)
    metrics = json.loads(res.metrics.read_text())
    assert set(metrics) == {"model", "pixels"}
    assert set(metrics["model"]) == {"mAP", "P@1", "P@10", "P@100"}
    assert 0 < metrics["model"]["mAP"] <= 1
    html = res.report.read_text()
    from lookalike.models.modelio import load_model
    from lookalike.models.reconstruct import has_trained_decoder

    # loss, query grid, LRAP@n, elbow; and reconstructions/denoising when the decoder trained
    expected = 5 if has_trained_decoder(load_model(res.model)) else 4
    assert html.count("data:image/png;base64,") == expected
    assert "http://" not in html and "https://" not in html
    assert (res.model / "loss.png").is_file()
    assert (res.collection / "manifest.json").is_file()


def test_demo_command_says_how_to_serve(tmp_path, capsys) -> None:
    from lookalike.app.cli import main

    assert main(["-q", "demo", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"lookalike serve {tmp_path / 'collection'}" in out
    assert json.loads((tmp_path / "metrics.json").read_text())["pixels"]["mAP"] > 0
