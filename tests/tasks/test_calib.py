"""tasks.calib: calibration text of the text tasks (quant's CLI reads it through a separate process)."""

import pytest

from tasks.calib import TEXT_TASKS, calibration_text, main


def test_calibration_text_is_capped_and_bad_names_say_what_exists(capsys):
    text = calibration_text("stdlib", max_bytes=5000)
    assert 0 < len(text.encode("utf-8")) <= 5000 and "# ===== file:" in text
    with pytest.raises(ValueError, match="choose one of"):
        calibration_text("imagenet")
    assert main(["stdlib", "--max-bytes", "100"]) == 0 and len(capsys.readouterr().out.encode()) <= 100
    assert main(["nope"]) == 2 and "unknown text task" in capsys.readouterr().err
    assert set(TEXT_TASKS) == {"stdlib", "humaneval"}
