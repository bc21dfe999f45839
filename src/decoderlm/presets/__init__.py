"""Named recipes, one module each; `decoderlm.config.get_recipe(name)` finds them by file name
(dashes in a preset name are underscores in its module name)."""
