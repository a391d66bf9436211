"""What an operator runs around a migration: doctor (can this machine do it), shadow (measure
both channels of a demo probe), bench/ (the benchmarks behind every speed claim), lab/ (a
multi-host migration on one machine) and report/ (the HTML report)."""
