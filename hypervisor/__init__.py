"""The hypervisor microkernel: partitions, intercept and hypercall dispatch, telemetry."""
