"""The defect matrix: the suites that target each seeded defect, run with it on and off."""
