"""The control plane: what a migration may do next and when.

phases (the legal moves; intent -> apply -> confirm, crash recovery), policy (pass / breach /
no-data per window and rule, N in a row), controller (the loop, one leader with a lease, standbys),
moves (manual moves and what-if), story (one name for each window, the streak every view shows),
stall (why a migration does not advance), liveness (lost hosts), advise (ring size, wakeup and
go / no-go from the windows), notify and metrics (what the controller tells the outside)."""
