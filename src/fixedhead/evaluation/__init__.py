"""A trained run loaded once; predictions and scores; the paper's analysis; robustness to corruptions and new test sets."""
