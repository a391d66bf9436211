"""`migrator bench ...`: measurements that print ratios taken side by side in one run (consumers,
overhead, parity, producer, rollback, controller, fleet, idle host), never timed tests."""
