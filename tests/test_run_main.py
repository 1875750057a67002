"""conftest.run_main, which most tests run the scripts through: it must show what a process
would show and leave nothing behind, or in-process runs would prove less than subprocess ones."""
import logging
import os
import sys
import types
import warnings

import torch
from conftest import run_main


def test_run_main_captures_what_a_process_prints_and_puts_the_process_back(monkeypatch):
    def main(argv):
        print("out", argv)
        warnings.warn("a library's warning")
        warnings.warn("an old name", DeprecationWarning)  # a fresh interpreter hides these
        logging.getLogger("some.library").warning("a log record")
        os.environ["R1TRACK_PROBE"] = "1"
        torch.set_num_threads(1)
        return 3

    monkeypatch.setitem(sys.modules, "probe_script", types.SimpleNamespace(main=main))
    threads = torch.get_num_threads()
    result = run_main("probe_script.py", "a", 1)
    assert result.returncode == 3 and result.stdout == "out ['a', '1']\n"
    assert "UserWarning: a library's warning" in result.stderr and "a log record" in result.stderr
    assert "an old name" not in result.stderr
    assert "R1TRACK_PROBE" not in os.environ and torch.get_num_threads() == threads
