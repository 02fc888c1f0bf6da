"""`twin bench`: performance measured as ratios against a baseline run in the same process."""
