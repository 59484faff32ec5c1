"""Training machinery: behaviour cloning (bc), grounding pretraining of the keypoint reader
(grounding), DAgger (dagger) and their shared runtime (sampler, schedule, RNG state,
distributed set-up). It drives the simulator through ``envs``; the model core (``vla``)
never imports it."""
