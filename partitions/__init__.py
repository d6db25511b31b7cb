"""A child partition: its VPs (one thread each), its RAM, the guest kernel."""
