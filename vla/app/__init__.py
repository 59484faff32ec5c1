"""The application around the model: the entry scripts' front door (cli: compose and check
the Hydra config, one-line errors) and the run log (console). Not part of the model core:
it may use ``envs``."""
