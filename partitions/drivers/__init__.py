"""The guest kernel's device drivers: what an operating system does with each chip."""
