"""What the fault and bad-input suite tried (bad inputs, faults, data lost): every test and
tool counts into FIGURES, and conftest.py prints it at the end of the run."""

from collections import Counter

FIGURES: Counter = Counter()  # bad_inputs, kill_trials, write_failures, ..., data_lost
