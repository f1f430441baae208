"""Entry points for scheduled batch work; thin wrappers over ``recxfer``."""
