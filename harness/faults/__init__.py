"""Faults: process faults (kill, pause, restart), partitions (grudges) and Toxiproxy toxics."""
