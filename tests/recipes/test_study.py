from __future__ import annotations

from lmlab.cli import main


def test_run_smoke_trains_all_three_then_skips_finished_steps(ptb_available, tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["run", "--preset", "smoke", "--out", str(out)]) == 0
    first = capsys.readouterr().out
    table = (out / "ptb_table.md").read_text()
    for model in ("rnn", "lstm", "transformer"):
        assert f"| {model} |" in table and (out / "ptb" / model / "final.json").is_file()
    assert table in first
    assert main(["run", "--preset", "smoke", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("done already") == 3


def test_unknown_preset_is_a_clear_error(tmp_path, capsys):
    assert main(["run", "--preset", "huge", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err
