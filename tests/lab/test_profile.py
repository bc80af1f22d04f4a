"""The profile harness's text summary of py-spy's collapsed stacks."""

from tcpcopy.lab.profile import summarize


def test_summary_adds_samples_per_function_own_and_below(tmp_path):
    raw = tmp_path / "owner.txt"
    raw.write_text(
        "run (/x/session/owner.py:150);_pump (/x/session/engine.py:801) 30\n"
        "run (/x/session/owner.py:151);_pump (/x/session/engine.py:802) 10\n"
        "run (/x/session/owner.py:150);decode (/x/capture/packet.py:213) 60\n"
        "garbage line without a count\n")
    text = summarize(raw)
    assert "owner: 100 samples" in text
    own = text.split("own %")[1].split("total %")[0]
    assert "60.0  decode (capture/packet.py)" in own
    assert "40.0  _pump (session/engine.py)" in own          # two lines of one function
    assert "100.0  run (session/owner.py)" in text.split("total %")[1]


def test_an_empty_profile_says_so(tmp_path):
    raw = tmp_path / "capture.txt"
    raw.write_text("")
    assert summarize(raw) == "capture.txt: no samples\n"
