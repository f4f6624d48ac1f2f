"""Benchmarks of corpus-manager against rclone, AzCopy and the physical limit (`python -m bench`); see README.md."""
