"""CLI sub-commands, one module each (see decoderlm.cli)."""
