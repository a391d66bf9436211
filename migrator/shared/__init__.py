"""The words every layer shares, under errors and config: vocab (phases, modes, names, slices),
records (the window record and its text form), resources (the files migrator ships)."""
