"""Test rig fixtures (filled in by the owning module)."""
