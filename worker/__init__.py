"""The VM worker process (vmwp): one partition's emulated devices."""
